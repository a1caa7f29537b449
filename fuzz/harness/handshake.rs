//! `handshake`: the real connection code (`ferrymq-amqp`'s `connection.rs`, reached through
//! `AmqpServer`) fed what a client sends, over a loopback TCP socket, against a fresh
//! in-memory broker (user `guest`, vhost `/`). The connection code takes a `TcpStream`, so the
//! socket is real rather than an in-memory duplex.
//!
//! Input: one byte choosing how the stream is split into writes, then the 8 bytes sent as the
//! protocol header, then the frames. The client drains whatever the broker answers and
//! closes its side when the input ends; the broker must then end the connection and stop.

use ferrymq_amqp::{AmqpConfig, AmqpServer};
use ferrymq_core::{Broker, BrokerConfig};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::watch;

/// How long one input may take before it counts as a hang. Nothing here waits on a timer
/// once the client has closed its side, so a healthy run takes milliseconds.
const HANG: Duration = Duration::from_secs(20);

/// One runtime for every input: building a runtime per input would dominate the run time.
/// Single-threaded, so a crash reproduces with the same interleaving as often as possible.
fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Bytes per write: everything at once, one byte at a time (every frame split across reads),
/// or a size from the input.
fn chunk_size(sel: u8) -> usize {
    match sel % 4 {
        0 => usize::MAX,
        1 => 1,
        2 => 7,
        _ => usize::from(sel) * 13,
    }
}

/// Runs one client session described by `data`.
pub fn handshake(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (header, frames) = rest.split_at(rest.len().min(8));
    let chunk = chunk_size(sel);
    runtime().block_on(async {
        let broker = Broker::new(BrokerConfig::default());
        let config = AmqpConfig {
            handshake_timeout: Duration::from_millis(500),
            ..AmqpConfig::default()
        };
        let server = AmqpServer::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), broker, config)
            .await
            .expect("bind a loopback listener");
        let addr = server.local_addr().expect("listener address");
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(server.run(stop_rx));
        tokio::time::timeout(HANG, client(addr, header, frames, chunk))
            .await
            .expect("the broker did not end the connection after the client closed its side");
        let _ = stop_tx.send(true);
        tokio::time::timeout(HANG, server)
            .await
            .expect("the broker did not stop")
            .expect("the listener task panicked");
    });
}

/// Sends the header and the frames in `chunk`-sized writes while draining the broker's
/// answers, then closes the sending side and waits for the broker to close the connection.
async fn client(addr: SocketAddr, header: &[u8], frames: &[u8], chunk: usize) {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the broker");
    let _ = stream.set_nodelay(true);
    // Reset instead of TIME_WAIT on close: millions of connections must not use up the
    // loopback port range.
    let _ = stream.set_zero_linger();
    let (mut rd, mut wr) = stream.into_split();
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        rd
    });
    // A write fails once the broker has closed the connection: that is its answer.
    if wr.write_all(header).await.is_ok() {
        for c in frames.chunks(chunk) {
            if wr.write_all(c).await.is_err() {
                break;
            }
            // Let the broker read this write before the next one arrives.
            tokio::task::yield_now().await;
        }
    }
    let _ = wr.shutdown().await;
    let rd = drain.await.expect("the reading task panicked");
    drop((rd, wr));
}
