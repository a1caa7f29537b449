//! Listening sockets: the default `::` listens on IPv6 and IPv4 at once, as RabbitMQ does.

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// How many pending connections the kernel queues before `accept` (RabbitMQ uses 128; a
/// burst of thousands of clients reconnecting after a restart needs more).
const BACKLOG: i32 = 4096;

/// Parses `bind` (an IPv4 or IPv6 address, brackets optional) with `port`.
pub fn listen_addr(bind: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let host = bind.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().with_context(|| {
        format!("invalid bind address {bind:?} (expected an IP address such as :: or 127.0.0.1)")
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// Binds a listening socket on `addr`. The unspecified IPv6 address `::` is bound
/// dual-stack (IPv4 clients arrive as mapped addresses) whatever the host's
/// `net.ipv6.bindv6only` says; where the host has no IPv6 at all it falls back to
/// `0.0.0.0`, so the default works on every machine.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    match bind_exact(addr) {
        Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && no_ipv6(&e) => {
            tracing::warn!("IPv6 is not available ({e}); listening on IPv4 only");
            bind_exact(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                addr.port(),
            ))
        }
        other => other,
    }
}

fn bind_exact(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // As std and tokio do: a restarted broker can bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Whether `e` says the host cannot do IPv6 (kernel without it, or disabled).
fn no_ipv6(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_families_with_or_without_brackets() {
        assert_eq!(listen_addr("::", 5672).unwrap().to_string(), "[::]:5672");
        assert_eq!(listen_addr("[::1]", 1).unwrap().to_string(), "[::1]:1");
        assert_eq!(listen_addr("0.0.0.0", 2).unwrap().to_string(), "0.0.0.0:2");
        assert!(listen_addr("localhost", 2).is_err());
    }

    #[test]
    fn unspecified_ipv6_accepts_ipv4_clients() {
        let l = bind(listen_addr("::", 0).unwrap()).unwrap();
        let port = l.local_addr().unwrap().port();
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        if l.local_addr().unwrap().is_ipv6() {
            std::net::TcpStream::connect(("::1", port)).unwrap();
        }
    }
}
