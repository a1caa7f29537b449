//! `/api/connections` (list, show, close) and `/api/consumers`.

use super::{visible_vhost, visible_vhosts, St};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::paging::ListQuery;
use crate::views::{channel_json, connection_json, connection_name};
use crate::{blocking, Api};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ferrymq_core::connections::ConnectionInfo;
use ferrymq_core::queue::{ConsumerView, Queue};
use ferrymq_core::{ConnectionId, VHost};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Connections the caller may see: all for monitoring users, else its own.
fn visible(api: &Api, caller: &Caller, vhost: Option<&str>) -> Vec<Arc<ConnectionInfo>> {
    let mut v: Vec<_> = api
        .broker
        .connections()
        .into_iter()
        .filter(|c| caller.is_monitor() || c.user == caller.user)
        .filter(|c| vhost.is_none_or(|v| c.vhost == v))
        .collect();
    v.sort_by_key(|c| c.id);
    v
}

fn list(api: &Api, conns: Vec<Arc<ConnectionInfo>>, q: &ListQuery) -> ApiResult<Value> {
    let filter = q.name_filter()?;
    let total = conns.len();
    let items = conns
        .iter()
        .filter(|c| filter(&connection_name(c)))
        .map(|c| connection_json(c, &api.node, api.rates.connection(c.id)))
        .collect();
    q.respond(items, total)
}

/// GET /api/connections.
pub(crate) async fn list_all(
    axum::extract::State(api): St,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || list(&api, visible(&api, &caller, None), &q).map(Json)).await
}

/// GET /api/vhosts/{vhost}/connections.
pub(crate) async fn list_vhost(
    axum::extract::State(api): St,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        visible_vhost(&api, &caller, &vhost)?;
        list(&api, visible(&api, &caller, Some(&vhost)), &q).map(Json)
    })
    .await
}

fn by_name(api: &Api, caller: &Caller, name: &str) -> ApiResult<Arc<ConnectionInfo>> {
    visible(api, caller, None)
        .into_iter()
        .find(|c| connection_name(c) == name)
        .ok_or(ApiError::NotFound)
}

/// GET /api/connections/{name}.
pub(crate) async fn show(
    axum::extract::State(api): St,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let c = by_name(&api, &caller, &name)?;
        Ok(Json(connection_json(
            &c,
            &api.node,
            api.rates.connection(c.id),
        )))
    })
    .await
}

/// DELETE /api/connections/{name}: closes it with 320 CONNECTION_FORCED and the reason in
/// the `X-Reason` header (RabbitMQ's "Closed via management plugin" by default). Users
/// may close their own connections; administrators any.
pub(crate) async fn close(
    axum::extract::State(api): St,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let c = by_name(&api, &caller, &name)?;
    if c.user != caller.user && !caller.is_admin() {
        return Err(ApiError::NotAuthorised("Not administrator user".into()));
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(200).collect::<String>())
        .unwrap_or_else(|| "Closed via management plugin".into());
    c.close(&reason);
    Ok(StatusCode::NO_CONTENT)
}

/// GET /api/channels.
pub(crate) async fn channels_all(
    axum::extract::State(api): St,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || channels(&api, visible(&api, &caller, None), &q).map(Json)).await
}

/// GET /api/vhosts/{vhost}/channels.
pub(crate) async fn channels_vhost(
    axum::extract::State(api): St,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        visible_vhost(&api, &caller, &vhost)?;
        channels(&api, visible(&api, &caller, Some(&vhost)), &q).map(Json)
    })
    .await
}

/// GET /api/connections/{name}/channels.
pub(crate) async fn connection_channels(
    axum::extract::State(api): St,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let c = by_name(&api, &caller, &name)?;
        channels(&api, vec![c], &q).map(Json)
    })
    .await
}

/// GET /api/channels/{name}.
pub(crate) async fn channel(
    axum::extract::State(api): St,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        for c in visible(&api, &caller, None) {
            for ch in c.channel_list() {
                let v = channel_json(&c, &ch, &api.node, api.rates.channel(c.id, ch.number));
                if v["name"] == name.as_str() {
                    return Ok(Json(v));
                }
            }
        }
        Err(ApiError::NotFound)
    })
    .await
}

fn channels(api: &Api, conns: Vec<Arc<ConnectionInfo>>, q: &ListQuery) -> ApiResult<Value> {
    let filter = q.name_filter()?;
    let mut items = Vec::new();
    let mut total = 0;
    for c in &conns {
        for ch in c.channel_list() {
            total += 1;
            let v = channel_json(c, &ch, &api.node, api.rates.channel(c.id, ch.number));
            if v["name"].as_str().is_some_and(&filter) {
                items.push(v);
            }
        }
    }
    q.respond(items, total)
}

/// A consumer as `/api/consumers` lists it.
pub(crate) fn consumer_json(api: &Api, conns: &Conns, q: &Queue, c: &ConsumerView) -> Value {
    let conn = conns.get(&c.connection);
    let (conn_name, peer_host, peer_port, user) = match &conn {
        Some(x) => (
            json!(connection_name(x)),
            x.meta
                .peer
                .map_or(Value::Null, |p| json!(p.ip().to_canonical().to_string())),
            x.meta.peer.map_or(Value::Null, |p| json!(p.port())),
            json!(x.user),
        ),
        None => (Value::Null, Value::Null, Value::Null, Value::Null),
    };
    json!({
        "consumer_tag": c.tag,
        "queue": {"name": q.name, "vhost": q.vhost},
        "ack_required": c.ack_required,
        "exclusive": c.exclusive,
        "active": true,
        "activity_status": "up",
        "arguments": if c.priority != 0 { json!({"x-priority": c.priority}) } else { json!({}) },
        "prefetch_count": c.channel.map_or(0, |(_, p)| p),
        "channel_details": {
            "name": match (&conn_name, c.channel) {
                (Value::String(n), Some((number, _))) => json!(format!("{n} ({number})")),
                _ => Value::Null,
            },
            "number": c.channel.map(|(n, _)| n),
            "connection_name": conn_name,
            "node": api.node,
            "peer_host": peer_host,
            "peer_port": peer_port,
            "user": user,
        },
    })
}

/// Live connections by id, for looking up many consumers' connections.
pub(crate) type Conns = HashMap<ConnectionId, Arc<ConnectionInfo>>;

/// Every live connection by id.
pub(crate) fn conns_by_id(api: &Api) -> Conns {
    api.broker
        .connections()
        .into_iter()
        .map(|c| (c.id, c))
        .collect()
}

fn consumers(api: &Api, vhosts: &[Arc<VHost>], q: &ListQuery) -> ApiResult<Value> {
    let conns = conns_by_id(api);
    let mut items = Vec::new();
    for v in vhosts {
        let mut qs = v.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        for queue in qs {
            for c in queue.snapshot().consumers {
                items.push(consumer_json(api, &conns, &queue, &c));
            }
        }
    }
    let n = items.len();
    q.respond(items, n)
}

/// GET /api/consumers.
pub(crate) async fn consumers_all(
    axum::extract::State(api): St,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || consumers(&api, &visible_vhosts(&api, &caller), &q).map(Json)).await
}

/// GET /api/consumers/{vhost}.
pub(crate) async fn consumers_vhost(
    axum::extract::State(api): St,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let v = visible_vhost(&api, &caller, &vhost)?;
        consumers(&api, &[v], &q).map(Json)
    })
    .await
}
