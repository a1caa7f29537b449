//! The AMQP listeners (plain and TLS): accept connections, and on shutdown close them with 320.

use crate::connection;
use crate::tls::ServerTls;
use ferrymq_core::Broker;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Protocol limits offered to clients in connection.tune.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// Largest frame, including header and end octet (RabbitMQ's default: 128 KiB).
    pub frame_max: u32,
    /// Highest channel number.
    pub channel_max: u16,
    /// Suggested heartbeat interval in seconds (0 disables).
    pub heartbeat: u16,
    /// Time a client has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Whether plain connections that trickle small frames have their socket's receive
    /// low-water mark raised (fewer wake-ups, up to ~2 ms more latency; ADR 0013).
    pub receive_batching: bool,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            handshake_timeout: Duration::from_secs(10),
            receive_batching: true,
        }
    }
}

/// A bound AMQP listener, plain or TLS (AMQPS).
pub struct AmqpServer {
    listener: TcpListener,
    broker: Arc<Broker>,
    config: Arc<AmqpConfig>,
    tls: Option<Arc<ServerTls>>,
}

impl AmqpServer {
    /// Binds a plain AMQP listener.
    pub async fn bind(
        addr: SocketAddr,
        broker: Arc<Broker>,
        config: AmqpConfig,
    ) -> std::io::Result<Self> {
        Ok(AmqpServer {
            listener: TcpListener::bind(addr).await?,
            broker,
            config: Arc::new(config),
            tls: None,
        })
    }

    /// Binds an AMQPS listener: each connection starts with a TLS handshake using the
    /// configuration `tls` holds when it is accepted.
    pub async fn bind_tls(
        addr: SocketAddr,
        broker: Arc<Broker>,
        config: AmqpConfig,
        tls: Arc<ServerTls>,
    ) -> std::io::Result<Self> {
        Ok(AmqpServer {
            tls: Some(tls),
            ..AmqpServer::bind(addr, broker, config).await?
        })
    }

    /// Serves on an already bound, non-blocking `listener` (the binary binds it itself to
    /// choose socket options such as dual-stack IPv6); `tls` makes it an AMQPS listener.
    pub fn from_listener(
        listener: std::net::TcpListener,
        broker: Arc<Broker>,
        config: AmqpConfig,
        tls: Option<Arc<ServerTls>>,
    ) -> std::io::Result<Self> {
        Ok(AmqpServer {
            listener: TcpListener::from_std(listener)?,
            broker,
            config: Arc::new(config),
            tls,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown` turns true, then closes every connection with
    /// 320 CONNECTION_FORCED and waits for them to finish.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((stream, peer)) => {
                        // On a dual-stack listener IPv4 peers arrive as ::ffff:a.b.c.d; shown
                        // and checked (loopback-only users) as the IPv4 address they are.
                        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
                        let (b, c, s) = (self.broker.clone(), self.config.clone(), shutdown.clone());
                        let tls = self.tls.as_ref().map(|t| t.current());
                        conns.spawn(connection::serve(stream, peer, b, c, tls, s));
                    }
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = shutdown.changed() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(self.listener);
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            conns.abort_all();
        }
    }
}
