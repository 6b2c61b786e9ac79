//! Moving bytes between two TCP sockets, both ways, with correct half-close.
//!
//! On Linux the default is zero-copy `splice(2)`: one pipe per direction, the
//! data goes socket -> pipe -> socket without entering user space. When a pipe
//! cannot be created (fd limit) or splice is refused by the kernel, or when the
//! caller asks for it, a buffered copy with one reused buffer per direction is
//! used instead. Both paths end a direction the same way: EOF on the source
//! shuts down the write side of the destination (FIN), and the other direction
//! keeps flowing until it sees its own EOF.

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Bytes moved by one splice call at most.
const SPLICE_LEN: usize = 1 << 20;
/// Linux's default pipe capacity.
const DEFAULT_PIPE_SIZE: usize = 64 * 1024;
/// Env override of the pipe capacity per direction (bytes; benchmarks).
pub const ENV_PIPE_SIZE: &str = "GEFYRA_CARRIER_PIPE_SIZE";

/// The pipe capacity per direction. Pipe pages count against a per-user quota
/// shared by every process of the same uid on the node
/// (/proc/sys/fs/pipe-user-pages-soft, 64 MiB by default), and carrier runs
/// as uid 65532, a common non-root uid: the kernel's default size is kept
/// unless the environment asks otherwise.
fn pipe_size() -> usize {
    static SIZE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        std::env::var(ENV_PIPE_SIZE)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| (4096..=(1 << 26)).contains(&n))
            .unwrap_or(DEFAULT_PIPE_SIZE)
    })
}
/// Buffer per direction of the buffered path.
const BUF_SIZE: usize = 64 * 1024;

/// How to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// splice(2) through a pipe per direction, buffered when unavailable.
    Splice,
    /// Always the buffered copy.
    Buffered,
}

/// Bytes moved in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Copies `a` <-> `b` until both directions saw EOF (or one failed). `prefix`
/// are bytes already read from `a` that must reach `b` first.
pub async fn relay(
    mut a: TcpStream,
    mut b: TcpStream,
    prefix: &[u8],
    mode: CopyMode,
) -> io::Result<Moved> {
    if !prefix.is_empty() {
        b.write_all(prefix).await?;
    }
    let (ab, ba) = match mode {
        CopyMode::Splice => tokio::try_join!(copy_dir(&a, &b, true), copy_dir(&b, &a, true)),
        CopyMode::Buffered => tokio::try_join!(copy_dir(&a, &b, false), copy_dir(&b, &a, false)),
    }
    .inspect_err(|_| {
        // Propagate an abortive close: the peer that did nothing wrong sees a
        // reset rather than a clean EOF it could mistake for a complete reply.
        let _ = socket2::SockRef::from(&a).set_linger(Some(Duration::ZERO));
        let _ = socket2::SockRef::from(&b).set_linger(Some(Duration::ZERO));
    })?;
    // Both sides have shut down their write halves; flush nothing, just close.
    let _ = a.flush().await;
    let _ = b.flush().await;
    Ok(Moved {
        a_to_b: ab + prefix.len() as u64,
        b_to_a: ba,
    })
}

/// Whether splice(2) between two TCP sockets works here (a pipe can be made).
pub fn splice_available() -> bool {
    Pipe::new().is_ok()
}

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let size = pipe_size();
        if size != DEFAULT_PIPE_SIZE {
            // Refused above /proc/sys/fs/pipe-max-size or over the per-user
            // pipe quota: the default size is kept.
            let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(size as i32));
        }
        Ok(Pipe { r, w })
    }
}

fn shutdown_write(s: &TcpStream) {
    // ENOTCONN when the peer already reset: nothing left to tell it.
    let _ = socket2::SockRef::from(s).shutdown(Shutdown::Write);
}

/// One direction: src -> dst until EOF on src, then FIN to dst.
async fn copy_dir(src: &TcpStream, dst: &TcpStream, try_splice: bool) -> io::Result<u64> {
    // Pipes and buffers are made when the first bytes (or EOF) arrive: an idle
    // connection (a tcpSocket probe, a pooled keep-alive) holds none.
    src.readable().await?;
    if try_splice {
        match Pipe::new() {
            Ok(pipe) => match splice_dir(src, dst, &pipe).await {
                Err(SpliceError::Unsupported) => {
                    tracing::debug!("splice refused by the kernel; buffered copy");
                }
                Err(SpliceError::Io(e)) => return Err(e),
                Ok(n) => return Ok(n),
            },
            Err(e) => tracing::debug!(error = %e, "no pipe for splice; buffered copy"),
        }
    }
    buffered_dir(src, dst).await
}

enum SpliceError {
    /// The kernel refused splice for these fds before any byte moved.
    Unsupported,
    Io(io::Error),
}

impl From<io::Error> for SpliceError {
    fn from(e: io::Error) -> Self {
        SpliceError::Io(e)
    }
}

async fn splice_dir(src: &TcpStream, dst: &TcpStream, pipe: &Pipe) -> Result<u64, SpliceError> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total: u64 = 0;
    loop {
        // socket -> pipe. The pipe is empty here, so EAGAIN means "no data on
        // the socket yet".
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src, None, &pipe.w, None, SPLICE_LEN, flags).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e)
                    if total == 0
                        && matches!(
                            e.raw_os_error().map(Errno::from_raw),
                            Some(Errno::EINVAL | Errno::ENOSYS)
                        ) =>
                {
                    return Err(SpliceError::Unsupported)
                }
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            shutdown_write(dst);
            return Ok(total);
        }
        // pipe -> socket. The pipe holds `left` bytes, so EAGAIN means "the
        // destination's send buffer is full".
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(&pipe.r, None, dst, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
        total += n as u64;
    }
}

async fn buffered_dir(src: &TcpStream, dst: &TcpStream) -> io::Result<u64> {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total: u64 = 0;
    loop {
        let n = loop {
            src.readable().await?;
            match src.try_read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            shutdown_write(dst);
            return Ok(total);
        }
        let mut off = 0;
        while off < n {
            dst.writable().await?;
            match dst.try_write(&buf[off..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => off += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    async fn roundtrip(mode: CopyMode) {
        // client <-> (a  relay  b) <-> server
        let (mut client, a) = pair().await;
        let (b, mut server) = pair().await;
        let relay = tokio::spawn(async move { relay(a, b, b"pre", mode).await });
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"prehello");
        // The other direction still flows after the half-close.
        server.write_all(b"world").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world");
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(
            moved,
            Moved {
                a_to_b: 8,
                b_to_a: 5
            }
        );
    }

    #[tokio::test]
    async fn splice_half_close() {
        assert!(splice_available());
        roundtrip(CopyMode::Splice).await;
    }

    #[tokio::test]
    async fn buffered_half_close() {
        roundtrip(CopyMode::Buffered).await;
    }
}
