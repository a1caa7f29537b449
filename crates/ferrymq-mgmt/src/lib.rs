//! FerryMQ's management plane: an HTTP API with RabbitMQ's paths, JSON fields, status codes
//! and error bodies (so rabbitmqadmin, monitoring agents and scripts written for RabbitMQ's
//! management plugin work unchanged), served on one listener (15672 by default).
//!
//! Handlers authenticate the caller (basic auth against the broker's users, tags as in
//! RabbitMQ) and do the work through the core: administration through the broker's admin
//! API, everything inside a vhost through a [`ferrymq_core::Session`] opened for the caller,
//! so permissions are checked in the same place as for AMQP clients.

pub mod auth;
mod console;
pub mod error;
pub mod metrics;
pub mod paging;
pub mod rates;
mod routes;
pub mod views;

use auth::Caller;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use error::{ApiError, ApiResult};
use ferrymq_core::Broker;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A listener the overview reports.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// `amqp`, `amqp/ssl`, `http`, ...
    pub protocol: String,
    /// Where it is bound.
    pub addr: SocketAddr,
}

/// What the handlers share.
pub struct Api {
    /// The broker.
    pub broker: Arc<Broker>,
    /// Sampled message rates.
    pub rates: Arc<rates::Rates>,
    /// The node name shown in every object (`ferrymq@host`).
    pub node: String,
    /// The broker's listeners, this one included.
    pub listeners: Vec<ListenerInfo>,
    /// When the broker started (ms since the epoch).
    pub started_at: u64,
    /// Live traces (`/api/traces`).
    pub(crate) traces: routes::Traces,
}

impl Api {
    /// Shared state for a broker.
    pub fn new(broker: Arc<Broker>, listeners: Vec<ListenerInfo>) -> Arc<Api> {
        Arc::new(Api {
            broker,
            rates: Arc::new(rates::Rates::default()),
            node: ferrymq_core::trace::node_name().to_string(),
            listeners,
            started_at: ferrymq_core::expiry::wall_ms(),
            traces: Default::default(),
        })
    }
}

impl FromRequestParts<Arc<Api>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> ApiResult<Caller> {
        // Without the peer address (in-process tests) the caller counts as remote, so
        // loopback-only users stay refused.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
        auth::authenticate(&api.broker, &parts.headers, peer)
    }
}

/// Runs `f` on a blocking thread: admin changes wait for group commit, and lists walk every
/// queue, neither of which may hold up the runtime's workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("request failed: {e}")))?
}

/// The HTTP API's routes for `api`, the metrics endpoints included.
pub fn router(api: Arc<Api>) -> axum::Router {
    routes::router(api.clone()).merge(metrics::authenticated_router(api))
}

/// A bound HTTP listener: the management API, or the Prometheus endpoint alone.
pub struct MgmtServer {
    listener: TcpListener,
    api: Arc<Api>,
    app: axum::Router,
    /// Whether this listener runs the rate sampler (the API's does; one per broker).
    samples: bool,
}

impl MgmtServer {
    /// Serves the API (and the metrics) on an already bound listener.
    pub fn from_listener(listener: std::net::TcpListener, api: Arc<Api>) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(MgmtServer {
            listener: TcpListener::from_std(listener)?,
            app: router(api.clone()),
            api,
            samples: true,
        })
    }

    /// Serves only the Prometheus endpoints (`/metrics`, ...), as rabbitmq_prometheus does
    /// on its own port.
    pub fn metrics_only(listener: std::net::TcpListener, api: Arc<Api>) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(MgmtServer {
            listener: TcpListener::from_std(listener)?,
            app: metrics::router(api.clone()),
            api,
            samples: false,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves requests (and samples rates) until `shutdown` turns true.
    ///
    /// Its own accept loop rather than `axum::serve`: a peer must finish sending a request's
    /// headers within [`HEADER_READ_TIMEOUT`] (also while a kept-alive connection waits for
    /// its next request), and at most [`MAX_HTTP_CONNECTIONS`] are open at once, so clients
    /// that connect and never send cannot use up the file descriptors AMQP needs.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let sampler = self.samples.then(|| {
            tokio::spawn(
                self.api
                    .rates
                    .clone()
                    .run(self.api.broker.clone(), shutdown.clone()),
            )
        });
        let app = self.app;
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = shutdown.changed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("management listener: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "management listener: {MAX_HTTP_CONNECTIONS} connections open, refusing one");
                continue;
            };
            let svc = hyper_util::service::TowerToHyperService::new(
                app.clone().layer(axum::Extension(ConnectInfo(peer))),
            );
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(io, svc);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, "management connection ended: {e}");
                }
                drop(slot);
            });
        }
        if let Some(s) = sampler {
            s.abort();
        }
    }
}

/// How long a peer has to send a request's headers.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Most HTTP connections open at once; more are closed on accept.
pub const MAX_HTTP_CONNECTIONS: usize = 1024;
