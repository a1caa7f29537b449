//! Prometheus metrics with rabbitmq_prometheus' names and labels, so existing scrape configs
//! and the published RabbitMQ Grafana dashboards work: `/metrics` (aggregated),
//! `/metrics/per-object` (one series per queue, channel and connection) and
//! `/metrics/detailed?family=..&vhost=..` (chosen families, `rabbitmq_detailed_` prefix),
//! plus FerryMQ's own histograms. Served on the HTTP API listener and on a listener of its
//! own (15692 by default), without authentication as rabbitmq_prometheus does (on the API's
//! listener a monitoring user's login is asked, as for the rest of the API).
//!
//! Nothing is counted for the metrics: a [`prometheus_client`] collector walks the broker's
//! state when scraped ([`snapshot::Snapshot`]) and encodes it in the OpenMetrics text format.

mod families;
mod snapshot;

/// The process's readings, shared with `/api/nodes`.
pub(crate) use snapshot::{open_fds, rss_bytes};

use crate::Api;
use axum::extract::{RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use families::Family;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use std::collections::HashSet;
use std::sync::Arc;

/// The content type of the OpenMetrics text format, which Prometheus scrapes natively.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Most `family` and `vhost` parameters one detailed query may name (bounds the sets).
const MAX_QUERY_VALUES: usize = 64;

/// Most scrapes encoded at once. The endpoints ask for no login and an exposition is held
/// whole (about 700 bytes per queue per object): without a bound, a few hundred concurrent
/// requests for `/metrics/per-object` hold hundreds of times that. Scrapers beyond it wait.
const MAX_CONCURRENT_SCRAPES: usize = 2;

/// Permits for [`MAX_CONCURRENT_SCRAPES`], shared by both listeners.
static SCRAPES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_SCRAPES);

/// What one scrape reports.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    /// `rabbitmq_` or `rabbitmq_detailed_`.
    prefix: &'static str,
    /// One series per object rather than sums.
    per_object: bool,
    /// Only these families (the detailed endpoint).
    families: Option<HashSet<Family>>,
    /// Only objects of these vhosts.
    vhosts: Option<HashSet<String>>,
}

impl Scope {
    fn aggregated() -> Self {
        Scope {
            prefix: "rabbitmq_",
            per_object: false,
            families: None,
            vhosts: None,
        }
    }

    fn wants(&self, f: Family) -> bool {
        match &self.families {
            Some(s) => s.contains(&f),
            None => f.in_default_set(),
        }
    }
}

/// The collector handed to the registry for one scrape.
struct Scrape {
    api: Arc<Api>,
    scope: Scope,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape")
            .field("scope", &self.scope)
            .finish()
    }
}

impl Collector for Scrape {
    fn encode(&self, enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        families::encode(&self.api, &self.scope, enc)
    }
}

/// The exposition for `scope`, in the OpenMetrics text format.
pub(crate) fn render(api: Arc<Api>, scope: Scope) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Scrape { api, scope }));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        // Writing to a String cannot fail; a collector error ends the exposition early.
        tracing::warn!("metrics encoding failed: {e}");
    }
    out
}

async fn serve(api: Arc<Api>, scope: Scope) -> Response {
    let Ok(_permit) = SCRAPES.acquire().await else {
        return crate::error::ApiError::Internal("scrapes are closed".into()).into_response();
    };
    // A scrape walks every queue: off the runtime's workers, like the API's lists.
    match tokio::task::spawn_blocking(move || render(api, scope)).await {
        Ok(body) => ([(CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(e) => crate::error::ApiError::Internal(format!("scrape failed: {e}")).into_response(),
    }
}

/// GET /metrics: sums over all objects.
async fn aggregated(State(api): State<Arc<Api>>) -> Response {
    serve(api, Scope::aggregated()).await
}

/// GET /metrics/per-object: one series per queue, channel and connection.
async fn per_object(State(api): State<Arc<Api>>) -> Response {
    let scope = Scope {
        per_object: true,
        ..Scope::aggregated()
    };
    serve(api, scope).await
}

/// GET /metrics/detailed?family=F&vhost=V (both repeatable): the families asked for, per
/// object, with the `rabbitmq_detailed_` prefix. Unknown families are ignored, as in
/// rabbitmq_prometheus.
async fn detailed(State(api): State<Arc<Api>>, RawQuery(q): RawQuery) -> Response {
    let mut families = HashSet::new();
    let mut vhosts: Option<HashSet<String>> = None;
    for (k, v) in q.as_deref().map(parse_query).unwrap_or_default() {
        match k.as_str() {
            "family" if families.len() < MAX_QUERY_VALUES => {
                if let Some(f) = Family::parse(&v) {
                    families.insert(f);
                }
            }
            "vhost" => {
                let s = vhosts.get_or_insert_with(HashSet::new);
                if s.len() < MAX_QUERY_VALUES {
                    s.insert(v);
                }
            }
            _ => {}
        }
    }
    let scope = Scope {
        prefix: "rabbitmq_detailed_",
        per_object: true,
        families: Some(families),
        vhosts,
    };
    serve(api, scope).await
}

/// `a=1&b=2` as decoded pairs; malformed escapes are kept as they came.
fn parse_query(q: &str) -> Vec<(String, String)> {
    let dec = |s: &str| {
        let s = s.replace('+', " ");
        urlencoding::decode(&s).map_or(s.clone(), |c| c.into_owned())
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (dec(k), dec(v)),
            None => (dec(p), String::new()),
        })
        .collect()
}

/// The metrics routes as the Prometheus listener serves them: without authentication, as
/// rabbitmq_prometheus does on 15692.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/metrics", get(aggregated))
        .route("/metrics/per-object", get(per_object))
        .route("/metrics/detailed", get(detailed))
        .with_state(api)
}

/// The same routes on the HTTP API's listener, where everything needs a login: basic auth
/// of a user tagged `monitoring` (or `administrator`), as the API's node and overview data.
/// Queue and connection names are not for anyone who can reach the management port.
pub fn authenticated_router(api: Arc<Api>) -> Router {
    router(api.clone()).layer(axum::middleware::from_fn_with_state(api, require_monitor))
}

async fn require_monitor(
    State(api): State<Arc<Api>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::extract::FromRequestParts;
    let (mut parts, body) = req.into_parts();
    let allowed = crate::auth::Caller::from_request_parts(&mut parts, &api)
        .await
        .and_then(|c| c.need_monitor());
    match allowed {
        Ok(()) => {
            next.run(axum::extract::Request::from_parts(parts, body))
                .await
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests;
