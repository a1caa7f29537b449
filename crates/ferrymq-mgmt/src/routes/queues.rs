//! `/api/queues`: list, show, declare, delete, purge.

use super::{flag, object, parse_body, session, truthy, visible_vhost, visible_vhosts, St};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::paging::ListQuery;
use crate::views::QueueView;
use crate::{blocking, Api};
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use ferrymq_core::policy::{self, Policy};
use ferrymq_core::queue::{Queue, QueueOptions};
use ferrymq_core::value::table_from_json;
use ferrymq_core::VHost;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The JSON of one queue, with its rates and the policy in effect.
pub(crate) fn queue_json(
    api: &Api,
    q: &Queue,
    policies: &mut HashMap<String, Vec<Policy>>,
    no_stats: bool,
) -> Value {
    let snap = q.snapshot();
    let ps = policies.entry(q.vhost.clone()).or_insert_with(|| {
        api.broker
            .vhost(&q.vhost)
            .map(|v| v.policies())
            .unwrap_or_default()
    });
    let policy =
        policy::effective(ps, &q.name, true).map(|p| (p.name.clone(), p.definition.clone()));
    QueueView {
        queue: q,
        snap: &snap,
        rates: api.rates.queue(&q.vhost, &q.name).unwrap_or_default(),
        policy,
        node: &api.node,
        no_stats,
    }
    .json()
}

fn list(api: &Api, vhosts: &[Arc<VHost>], q: &ListQuery) -> ApiResult<Value> {
    let filter = q.name_filter()?;
    let mut all: Vec<Arc<Queue>> = vhosts.iter().flat_map(|v| v.queues()).collect();
    let total = all.len();
    all.retain(|x| filter(&x.name));
    all.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    let mut policies = HashMap::new();
    if q.name_order_only() {
        if q.reversed() {
            all.reverse();
        }
        let w = q.window(all.len())?;
        let items = all[w]
            .iter()
            .map(|x| queue_json(api, x, &mut policies, q.no_stats()))
            .collect();
        return q.respond_window(items, all.len(), total);
    }
    let items = all
        .iter()
        .map(|x| queue_json(api, x, &mut policies, q.no_stats()))
        .collect();
    q.respond(items, total)
}

/// GET /api/queues.
pub(crate) async fn list_all(
    axum::extract::State(api): St,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || list(&api, &visible_vhosts(&api, &caller), &q).map(Json)).await
}

/// GET /api/queues/{vhost}.
pub(crate) async fn list_vhost(
    axum::extract::State(api): St,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let v = visible_vhost(&api, &caller, &vhost)?;
        list(&api, &[v], &q).map(Json)
    })
    .await
}

/// GET /api/queues/{vhost}/{name}: with its consumers.
pub(crate) async fn show(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let v = visible_vhost(&api, &caller, &vhost)?;
        let q = v.find_queue(&name).map_err(|_| ApiError::NotFound)?;
        let mut out = queue_json(&api, &q, &mut HashMap::new(), false);
        let conns = super::connections::conns_by_id(&api);
        let consumers: Vec<Value> = q
            .snapshot()
            .consumers
            .iter()
            .map(|c| super::connections::consumer_json(&api, &conns, &q, c))
            .collect();
        out["consumer_details"] = Value::Array(consumers);
        Ok(Json(out))
    })
    .await
}

/// PUT /api/queues/{vhost}/{name}: declares it (201 when created, 204 when it existed with
/// the same properties, 400 when they differ).
pub(crate) async fn declare(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    // AMQP names are short strings: a longer one could not be used by any client (RabbitMQ's
    // answer).
    if name.len() > 255 {
        return Err(ApiError::BadRequest(format!(
            "queue should be less than 255 bytes, actually was {}",
            name.len()
        )));
    }
    let b: Map<String, Value> = parse_body(&body)?;
    let options = QueueOptions {
        durable: flag(&b, "durable")?.unwrap_or(false),
        exclusive: false,
        auto_delete: flag(&b, "auto_delete")?.unwrap_or(false),
        arguments: table_from_json(&object(&b, "arguments")?),
    };
    blocking(move || {
        let s = session(&api, &caller, &vhost)?;
        let existed = s.vhost().find_queue(&name).is_ok();
        let (_, _, saved) = s.declare_queue(&name, options, false)?;
        api.broker.wait_saved(&saved)?;
        Ok(match existed {
            true => StatusCode::NO_CONTENT,
            false => StatusCode::CREATED,
        })
    })
    .await
}

/// DELETE /api/queues/{vhost}/{name}, with `if-unused` / `if-empty`.
pub(crate) async fn delete(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    blocking(move || {
        let s = session(&api, &caller, &vhost)?;
        s.vhost()
            .find_queue(&name)
            .map_err(|_| ApiError::NotFound)?;
        let (_, saved) =
            s.delete_queue(&name, truthy(q.get("if-unused")), truthy(q.get("if-empty")))?;
        api.broker.wait_saved(&saved)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// DELETE /api/queues/{vhost}/{name}/contents: purges it.
pub(crate) async fn purge(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    blocking(move || {
        let s = session(&api, &caller, &vhost)?;
        s.vhost()
            .find_queue(&name)
            .map_err(|_| ApiError::NotFound)?;
        s.purge_queue(&name)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
