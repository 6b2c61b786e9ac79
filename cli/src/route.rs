//! The two tiny jobs the `gefyra` binary does inside containers for `run`:
//!
//! * `__wait-route --via IP -- CMD...` is the dev container's entrypoint: it
//!   blocks until the container's default route goes via cargo (read from
//!   `/proc/net/route`, no privilege needed), then `exec`s the real command, so
//!   the user's process never starts before its traffic can reach the cluster.
//! * `__set-route --via IP` runs in a short-lived helper container that shares
//!   the dev container's network namespace and has NET_ADMIN: it replaces the
//!   default route with one via cargo (one rtnetlink message, no `ip` tool).
//!
//! The dev container itself gets no extra capability.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The default gateway in `/proc/net/route` contents (main table, IPv4).
pub fn default_gateway(proc_net_route: &str) -> Option<Ipv4Addr> {
    for line in proc_net_route.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        if f[1] == "00000000" && f[7] == "00000000" {
            let g = u32::from_str_radix(f[2], 16).ok()?;
            // the kernel prints the address's in-memory (network order) bytes as a host u32
            return Some(Ipv4Addr::from(g.to_le_bytes()));
        }
    }
    None
}

/// Blocks until the default route goes via `via`, then replaces this process with `cmd`.
pub fn wait_route_then_exec(via: Ipv4Addr, timeout: Duration, cmd: &[String]) -> Result<()> {
    let start = Instant::now();
    loop {
        let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        if default_gateway(&routes) == Some(via) {
            break;
        }
        if start.elapsed() > timeout {
            bail!(
                "gefyra: the default route via cargo ({via}) was not set within {}s; run `gefyra status`",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some((prog, args)) = cmd.split_first() else {
        bail!("gefyra: no command to run (the image has no entrypoint or cmd; pass -c)");
    };
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(prog).args(args).exec();
    bail!("gefyra: cannot start {prog}: {err}")
}

const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET: u8 = 2;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const RTA_GATEWAY: u16 = 5;

/// The rtnetlink request "replace the IPv4 default route with one via `via`".
pub fn default_route_message(via: Ipv4Addr, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(36);
    let len: u32 = 16 + 12 + 8;
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&RTM_NEWROUTE.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // struct rtmsg
    m.extend_from_slice(&[
        AF_INET,
        0, // dst_len: default route
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    // RTA_GATEWAY
    m.extend_from_slice(&8u16.to_ne_bytes());
    m.extend_from_slice(&RTA_GATEWAY.to_ne_bytes());
    m.extend_from_slice(&via.octets());
    m
}

/// Replaces this network namespace's default route with one via `via` (needs NET_ADMIN).
pub fn set_default_route(via: Ipv4Addr) -> Result<()> {
    use nix::sys::socket::{
        bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
        SockType,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .context("cannot open a netlink socket")?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).context("cannot bind the netlink socket")?;
    let msg = default_route_message(via, 1);
    send(fd.as_raw_fd(), &msg, MsgFlags::empty()).context("cannot send the route request")?;
    let mut buf = [0u8; 4096];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).context("no netlink answer")?;
    let buf = &buf[..n];
    if n < 20 {
        bail!("short netlink answer ({n} bytes)");
    }
    let ty = u16::from_ne_bytes([buf[4], buf[5]]);
    if ty != NLMSG_ERROR {
        bail!("unexpected netlink answer type {ty}");
    }
    let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if code != 0 {
        let err = std::io::Error::from_raw_os_error(-code);
        bail!("the kernel refused the default route via {via}: {err}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_route() {
        let s =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t00000000\t0200A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                 eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_gateway(s), Some(Ipv4Addr::new(192, 168, 0, 2)));
        assert_eq!(default_gateway("Iface\n"), None);
    }

    #[test]
    fn message_layout() {
        let m = default_route_message(Ipv4Addr::new(172, 30, 0, 2), 7);
        assert_eq!(m.len(), 36);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 36);
        assert_eq!(&m[32..36], &[172, 30, 0, 2]);
    }
}
