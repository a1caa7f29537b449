//! `/api/exchanges` and `/api/bindings`.

use super::{
    flag, object, parse_body, required_str, session, truthy, visible_vhost, visible_vhosts, St,
};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::paging::ListQuery;
use crate::views::{binding_json, default_binding_json, exchange_json, properties_key};
use crate::{blocking, Api};
use axum::extract::{Path, Query};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use ferrymq_core::exchange::{Destination, Exchange, ExchangeOptions};
use ferrymq_core::value::table_from_json;
use ferrymq_core::VHost;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

fn list(vhosts: &[Arc<VHost>], q: &ListQuery) -> ApiResult<Value> {
    let filter = q.name_filter()?;
    let mut all: Vec<(String, Arc<Exchange>)> = vhosts
        .iter()
        .flat_map(|v| v.exchanges().into_iter().map(|x| (v.name.clone(), x)))
        .collect();
    let total = all.len();
    all.retain(|(_, x)| filter(&x.name));
    all.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
    let items = all.iter().map(|(v, x)| exchange_json(x, v)).collect();
    q.respond(items, total)
}

/// GET /api/exchanges.
pub(crate) async fn list_all(
    axum::extract::State(api): St,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || list(&visible_vhosts(&api, &caller), &q).map(Json)).await
}

/// GET /api/exchanges/{vhost}.
pub(crate) async fn list_vhost(
    axum::extract::State(api): St,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || list(&[visible_vhost(&api, &caller, &vhost)?], &q).map(Json)).await
}

fn find(
    api: &Api,
    caller: &Caller,
    vhost: &str,
    name: &str,
) -> ApiResult<(Arc<VHost>, Arc<Exchange>)> {
    let v = visible_vhost(api, caller, vhost)?;
    // The default exchange is addressed as `amq.default` in paths.
    let name = if name == "amq.default" { "" } else { name };
    let x = v.exchange(name).map_err(|_| ApiError::NotFound)?;
    Ok((v, x))
}

/// GET /api/exchanges/{vhost}/{name}.
pub(crate) async fn show(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let (v, x) = find(&api, &caller, &vhost, &name)?;
        Ok(Json(exchange_json(&x, &v.name)))
    })
    .await
}

/// PUT /api/exchanges/{vhost}/{name}.
pub(crate) async fn declare(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    // AMQP names are short strings: nothing could be published to a longer one.
    if name.len() > 255 {
        return Err(ApiError::BadRequest(format!(
            "exchange should be less than 255 bytes, actually was {}",
            name.len()
        )));
    }
    let b: Map<String, Value> = parse_body(&body)?;
    let kind = required_str(&b, "type")?;
    let options = ExchangeOptions {
        durable: flag(&b, "durable")?.unwrap_or(true),
        auto_delete: flag(&b, "auto_delete")?.unwrap_or(false),
        internal: flag(&b, "internal")?.unwrap_or(false),
        arguments: table_from_json(&object(&b, "arguments")?),
    };
    blocking(move || {
        let s = session(&api, &caller, &vhost)?;
        let existed = s.vhost().exchange(&name).is_ok();
        let saved = s.declare_exchange(&name, &kind, options, false)?;
        api.broker.wait_saved(&saved)?;
        Ok(match existed {
            true => StatusCode::NO_CONTENT,
            false => StatusCode::CREATED,
        })
    })
    .await
}

/// DELETE /api/exchanges/{vhost}/{name}, with `if-unused`.
pub(crate) async fn delete(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    blocking(move || {
        let s = session(&api, &caller, &vhost)?;
        s.vhost().exchange(&name).map_err(|_| ApiError::NotFound)?;
        let saved = s.delete_exchange(&name, truthy(q.get("if-unused")))?;
        api.broker.wait_saved(&saved)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Every binding of a vhost: the default exchange's (one per queue) first, as RabbitMQ
/// lists them.
fn vhost_bindings(v: &VHost) -> Vec<Value> {
    let mut queues: Vec<String> = v.queues().iter().map(|q| q.name.clone()).collect();
    queues.sort();
    let mut out: Vec<Value> = queues
        .iter()
        .map(|q| default_binding_json(q, &v.name))
        .collect();
    let mut xs = v.exchanges();
    xs.sort_by(|a, b| a.name.cmp(&b.name));
    for x in xs.iter().filter(|x| !x.name.is_empty()) {
        out.extend(
            x.bindings()
                .iter()
                .map(|b| binding_json(&x.name, &v.name, b)),
        );
    }
    out
}

/// GET /api/bindings.
pub(crate) async fn bindings_all(
    axum::extract::State(api): St,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let items: Vec<Value> = visible_vhosts(&api, &caller)
            .iter()
            .flat_map(|v| vhost_bindings(v))
            .collect();
        let n = items.len();
        q.respond(items, n).map(Json)
    })
    .await
}

/// GET /api/bindings/{vhost}.
pub(crate) async fn bindings_vhost(
    axum::extract::State(api): St,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let v = visible_vhost(&api, &caller, &vhost)?;
        let items = vhost_bindings(&v);
        let n = items.len();
        q.respond(items, n).map(Json)
    })
    .await
}

fn dest_matches(d: &Destination, kind: &str, name: &str) -> bool {
    match d {
        Destination::Queue(q) => kind == "q" && q.name == name,
        Destination::Exchange(x) => kind == "e" && x.name == name,
    }
}

/// Bindings of exchange `source` (in `v`) that lead to `kind`/`dest`.
fn between(v: &VHost, source: &str, kind: &str, dest: &str) -> ApiResult<Vec<Value>> {
    let source = if source == "amq.default" { "" } else { source };
    let x = v.exchange(source).map_err(|_| ApiError::NotFound)?;
    match kind {
        "q" => v
            .find_queue(dest)
            .map(|_| ())
            .map_err(|_| ApiError::NotFound)?,
        "e" => v
            .exchange(dest)
            .map(|_| ())
            .map_err(|_| ApiError::NotFound)?,
        _ => return Err(ApiError::NotFound),
    }
    if source.is_empty() {
        return Ok(match kind {
            "q" => vec![default_binding_json(dest, &v.name)],
            _ => vec![],
        });
    }
    Ok(x.bindings()
        .iter()
        .filter(|b| dest_matches(&b.destination, kind, dest))
        .map(|b| binding_json(&x.name, &v.name, b))
        .collect())
}

/// GET /api/bindings/{vhost}/e/{source}/{q|e}/{dest}.
pub(crate) async fn bindings_between(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let v = visible_vhost(&api, &caller, &vhost)?;
        Ok(Json(Value::Array(between(&v, &source, &kind, &dest)?)))
    })
    .await
}

/// GET /api/bindings/{vhost}/e/{source}/{q|e}/{dest}/{props}.
pub(crate) async fn binding_show(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let v = visible_vhost(&api, &caller, &vhost)?;
        between(&v, &source, &kind, &dest)?
            .into_iter()
            .find(|b| b["properties_key"] == props.as_str())
            .map(Json)
            .ok_or(ApiError::NotFound)
    })
    .await
}

/// POST /api/bindings/{vhost}/e/{source}/{q|e}/{dest}: 201 with the new binding's path in
/// `Location`.
pub(crate) async fn bind(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let b: Map<String, Value> = parse_body(&body)?;
    let routing_key = match b.get("routing_key") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(k)) => k.clone(),
        Some(_) => return Err(ApiError::BadRequest("routing_key must be a string".into())),
    };
    let args = table_from_json(&object(&b, "arguments")?);
    blocking(move || {
        let s = session(&api, &caller, &vhost)?;
        let saved = match kind.as_str() {
            "q" => s.bind_queue(&dest, &source, &routing_key, args.clone())?,
            "e" => s.bind_exchange(&dest, &source, &routing_key, args.clone())?,
            _ => return Err(ApiError::NotFound),
        };
        api.broker.wait_saved(&saved)?;
        let key = properties_key(&ferrymq_core::exchange::Binding {
            destination: match kind.as_str() {
                "q" => Destination::Queue(s.vhost().find_queue(&dest)?),
                _ => Destination::Exchange(s.vhost().exchange(&dest)?),
            },
            routing_key,
            arguments: args,
        });
        let location = format!(
            "../../../../{}/e/{}/{}/{}/{}",
            urlencoding::encode(&vhost),
            urlencoding::encode(&source),
            kind,
            urlencoding::encode(&dest),
            urlencoding::encode(&key)
        );
        Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
    })
    .await
}

/// DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{dest}/{props}.
pub(crate) async fn unbind(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<StatusCode> {
    blocking(move || {
        let s = session(&api, &caller, &vhost)?;
        let x = s
            .vhost()
            .exchange(&source)
            .map_err(|_| ApiError::NotFound)?;
        let b = x
            .bindings()
            .into_iter()
            .find(|b| dest_matches(&b.destination, &kind, &dest) && properties_key(b) == props)
            .ok_or(ApiError::NotFound)?;
        let saved = match kind.as_str() {
            "q" => s.unbind_queue(&dest, &source, &b.routing_key, &b.arguments)?,
            _ => s.unbind_exchange(&dest, &source, &b.routing_key, &b.arguments)?,
        };
        api.broker.wait_saved(&saved)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// GET /api/queues/{vhost}/{name}/bindings.
pub(crate) async fn queue_bindings(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let v = visible_vhost(&api, &caller, &vhost)?;
        v.find_queue(&name).map_err(|_| ApiError::NotFound)?;
        let mut out = vec![default_binding_json(&name, &v.name)];
        let mut xs = v.exchanges();
        xs.sort_by(|a, b| a.name.cmp(&b.name));
        for x in xs.iter().filter(|x| !x.name.is_empty()) {
            out.extend(
                x.bindings()
                    .iter()
                    .filter(|b| dest_matches(&b.destination, "q", &name))
                    .map(|b| binding_json(&x.name, &v.name, b)),
            );
        }
        Ok(Json(Value::Array(out)))
    })
    .await
}

fn exchange_bindings(
    api: &Api,
    caller: &Caller,
    vhost: &str,
    name: &str,
    as_source: bool,
) -> ApiResult<Value> {
    let (v, x) = find(api, caller, vhost, name)?;
    let mut out = Vec::new();
    if as_source {
        out.extend(
            x.bindings()
                .iter()
                .map(|b| binding_json(&x.name, &v.name, b)),
        );
    } else {
        for src in v.exchanges().iter().filter(|s| !s.name.is_empty()) {
            out.extend(
                src.bindings()
                    .iter()
                    .filter(|b| dest_matches(&b.destination, "e", &x.name))
                    .map(|b| binding_json(&src.name, &v.name, b)),
            );
        }
    }
    Ok(Value::Array(out))
}

/// GET /api/exchanges/{vhost}/{name}/bindings/source.
pub(crate) async fn source_bindings(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    blocking(move || exchange_bindings(&api, &caller, &vhost, &name, true).map(Json)).await
}

/// GET /api/exchanges/{vhost}/{name}/bindings/destination.
pub(crate) async fn destination_bindings(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    blocking(move || exchange_bindings(&api, &caller, &vhost, &name, false).map(Json)).await
}
