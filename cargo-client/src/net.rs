//! TUN device and routes (netlink, no `ip` binary: the image is FROM scratch).

use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::RouteMessageBuilder;
use std::net::Ipv4Addr;

/// Creates and brings up the TUN device with `ip/24` (the tunnel subnet).
pub fn create_tun(name: &str, ip: Ipv4Addr, mtu: u16) -> std::io::Result<tun_rs::AsyncDevice> {
    tun_rs::DeviceBuilder::new()
        .name(name)
        .mtu(mtu)
        .ipv4(ip, proto::TUNNEL_PREFIX, None)
        .tx_queue_len(5000)
        .offload(true)
        .enable(true)
        .build_async()
}

/// Turns on IPv4 forwarding if the file is writable (else the container's
/// `--sysctl net.ipv4.ip_forward=1` must have done it).
pub fn enable_forwarding() {
    let p = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(p)
        .map(|v| v.trim() == "1")
        .unwrap_or(false)
    {
        return;
    }
    if let Err(e) = std::fs::write(p, "1") {
        tracing::warn!(error = %e, "cannot enable IPv4 forwarding; dev containers' traffic will not pass");
    }
}

/// The route the kernel uses now for `dst` from /proc/net/route: (interface, gateway).
pub fn current_route(dst: Ipv4Addr) -> Option<(String, Option<Ipv4Addr>)> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    let d = u32::from(dst);
    let mut best: Option<(u32, u32, String, u32)> = None; // (mask, metric, iface, gw)
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // the kernel prints the in-memory (network order) bytes as a native u32
        let hex = |s: &str| {
            u32::from_str_radix(s, 16)
                .ok()
                .map(|v| u32::from_be_bytes(v.to_ne_bytes()))
        };
        let (Some(dest), Some(gw), Some(mask)) = (hex(f[1]), hex(f[2]), hex(f[7])) else {
            continue;
        };
        let metric: u32 = f[6].parse().unwrap_or(0);
        if d & mask != dest & mask {
            continue;
        }
        let better = match &best {
            None => true,
            Some((m, met, _, _)) => {
                mask.count_ones() > m.count_ones() || (mask == *m && metric < *met)
            }
        };
        if better {
            best = Some((mask, metric, f[0].to_string(), gw));
        }
    }
    best.map(|(_, _, iface, gw)| (iface, (gw != 0).then(|| Ipv4Addr::from(gw))))
}

fn ifindex(name: &str) -> Result<u32, String> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .map_err(|e| format!("interface {name}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("interface {name}: {e}"))
}

/// Routes everything into the TUN (0.0.0.0/1 and 128.0.0.0/1, more specific
/// than any default route, less specific than the local networks), and keeps
/// the endpoint on the route it has now, as wg-quick does.
pub async fn add_routes(tun: &str, endpoint: Ipv4Addr) -> Result<(), String> {
    let before = current_route(endpoint);
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| format!("netlink: {e}"))?;
    let conn_task = tokio::spawn(conn);
    let tun_idx = ifindex(tun)?;
    let result = async {
        match before {
            Some((iface, gw)) if iface != tun => {
                let idx = ifindex(&iface)?;
                let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(endpoint, 32)
                    .output_interface(idx);
                b = match gw {
                    Some(gw) => b.gateway(gw),
                    None => b.scope(RouteScope::Link),
                };
                add(&handle, b.build(), &format!("{endpoint}/32 via {iface}")).await?;
            }
            _ => {
                return Err(format!(
                    "no route to the endpoint {endpoint}: cannot keep it outside the tunnel"
                ))
            }
        }
        for (net, prefix) in [
            (Ipv4Addr::new(0, 0, 0, 0), 1u8),
            (Ipv4Addr::new(128, 0, 0, 0), 1u8),
        ] {
            let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net, prefix)
                .output_interface(tun_idx)
                .scope(RouteScope::Link)
                .build();
            add(&handle, msg, &format!("{net}/{prefix} dev {tun}")).await?;
        }
        Ok(())
    }
    .await;
    conn_task.abort();
    result
}

async fn add(
    handle: &rtnetlink::Handle,
    msg: rtnetlink::packet_route::route::RouteMessage,
    what: &str,
) -> Result<(), String> {
    match handle.route().add(msg).replace().execute().await {
        Ok(()) => {
            tracing::info!(route = what, "route added");
            Ok(())
        }
        Err(e) => Err(format!("adding route {what}: {e}")),
    }
}
