//! The API's routes, grouped by the objects they serve.

mod admin;
mod connections;
mod definitions;
mod exchanges;
mod messages;
mod moves;
mod overview;
mod queues;
mod traces;

pub(crate) use traces::Traces;

pub(crate) use overview::RABBITMQ_COMPAT_VERSION;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::Api;
use axum::routing::{get, post, put};
use axum::Router;
use bytes::Bytes;
use ferrymq_core::VHost;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// Shorthand for the state extractor.
type St = axum::extract::State<Arc<Api>>;

/// Largest request body (a definitions import of 100,000 queues fits).
const MAX_BODY: usize = 64 * 1024 * 1024;

pub(crate) fn router(api: Arc<Api>) -> Router {
    let r = Router::new()
        .route("/api/overview", get(overview::overview))
        .route("/api/whoami", get(overview::whoami))
        .route("/api/nodes", get(overview::nodes))
        .route("/api/nodes/{node}", get(overview::node))
        .route("/api/extensions", get(overview::extensions))
        .route("/api/cluster-name", get(overview::cluster_name))
        .route("/api/health/checks/alarms", get(overview::alarms))
        .route("/api/health/checks/local-alarms", get(overview::alarms))
        .route(
            "/api/health/checks/port-listener/{port}",
            get(overview::port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{proto}",
            get(overview::protocol_listener),
        )
        .route(
            "/api/health/checks/virtual-hosts",
            get(overview::virtual_hosts),
        )
        .route(
            "/api/health/checks/node-is-quorum-critical",
            get(overview::ok_check),
        )
        .route(
            "/api/health/checks/node-is-mirror-sync-critical",
            get(overview::ok_check),
        )
        .route("/api/aliveness-test/{vhost}", get(overview::aliveness))
        // Queues.
        .route("/api/queues", get(queues::list_all))
        .route("/api/queues/{vhost}", get(queues::list_vhost))
        .route(
            "/api/queues/{vhost}/{name}",
            get(queues::show)
                .put(queues::declare)
                .delete(queues::delete),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(queues::purge),
        )
        .route(
            "/api/queues/{vhost}/{name}/bindings",
            get(exchanges::queue_bindings),
        )
        .route("/api/queues/{vhost}/{name}/get", post(messages::get))
        // Live traces (FerryMQ's, named after rabbitmq_tracing's).
        .route("/api/traces", get(traces::list))
        .route("/api/traces/{vhost}", get(traces::list))
        .route(
            "/api/traces/{vhost}/{name}",
            get(traces::read).put(traces::start).delete(traces::stop),
        )
        // A FerryMQ extension (the console's "move messages").
        .route(
            "/api/queues/{vhost}/{name}/move",
            post(moves::move_messages),
        )
        // Exchanges and bindings.
        .route("/api/exchanges", get(exchanges::list_all))
        .route("/api/exchanges/{vhost}", get(exchanges::list_vhost))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(exchanges::show)
                .put(exchanges::declare)
                .delete(exchanges::delete),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(exchanges::source_bindings),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(exchanges::destination_bindings),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            post(messages::publish),
        )
        .route("/api/bindings", get(exchanges::bindings_all))
        .route("/api/bindings/{vhost}", get(exchanges::bindings_vhost))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}",
            get(exchanges::bindings_between).post(exchanges::bind),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}",
            get(exchanges::binding_show).delete(exchanges::unbind),
        )
        // Connections and consumers.
        .route("/api/connections", get(connections::list_all))
        .route(
            "/api/vhosts/{vhost}/connections",
            get(connections::list_vhost),
        )
        .route(
            "/api/connections/{name}",
            get(connections::show).delete(connections::close),
        )
        .route(
            "/api/connections/{name}/channels",
            get(connections::connection_channels),
        )
        .route("/api/channels", get(connections::channels_all))
        .route("/api/channels/{name}", get(connections::channel))
        .route(
            "/api/vhosts/{vhost}/channels",
            get(connections::channels_vhost),
        )
        .route("/api/consumers", get(connections::consumers_all))
        .route("/api/consumers/{vhost}", get(connections::consumers_vhost))
        // Administration.
        .route("/api/vhosts", get(admin::vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(admin::vhost)
                .put(admin::put_vhost)
                .delete(admin::delete_vhost),
        )
        .route(
            "/api/vhosts/{vhost}/permissions",
            get(admin::vhost_permissions),
        )
        .route(
            "/api/vhosts/{vhost}/topic-permissions",
            get(admin::vhost_topic_permissions),
        )
        .route("/api/users", get(admin::users))
        .route(
            "/api/users/without-permissions",
            get(admin::users_without_permissions),
        )
        .route("/api/users/bulk-delete", post(admin::users_bulk_delete))
        .route(
            "/api/users/{user}",
            get(admin::user)
                .put(admin::put_user)
                .delete(admin::delete_user),
        )
        .route(
            "/api/users/{user}/permissions",
            get(admin::user_permissions),
        )
        .route(
            "/api/users/{user}/topic-permissions",
            get(admin::user_topic_permissions),
        )
        .route("/api/permissions", get(admin::permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(admin::permission)
                .put(admin::put_permission)
                .delete(admin::delete_permission),
        )
        .route("/api/topic-permissions", get(admin::topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(admin::topic_permission)
                .put(admin::put_topic_permission)
                .delete(admin::delete_topic_permission),
        )
        .route("/api/policies", get(admin::policies))
        .route("/api/policies/{vhost}", get(admin::vhost_policies))
        .route(
            "/api/policies/{vhost}/{name}",
            get(admin::policy)
                .put(admin::put_policy)
                .delete(admin::delete_policy),
        )
        .route("/api/vhost-limits", get(admin::vhost_limits))
        .route("/api/vhost-limits/{vhost}", get(admin::vhost_limits_of))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            put(admin::put_vhost_limit).delete(admin::delete_vhost_limit),
        )
        .route("/api/user-limits", get(admin::user_limits))
        .route("/api/user-limits/{user}", get(admin::user_limits_of))
        .route(
            "/api/user-limits/{user}/{name}",
            put(admin::put_user_limit).delete(admin::delete_user_limit),
        )
        .route(
            "/api/definitions",
            get(definitions::export).post(definitions::import),
        )
        .route(
            "/api/definitions/{vhost}",
            get(definitions::export_vhost).post(definitions::import_vhost),
        )
        .merge(crate::console::router())
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY));
    r.with_state(api)
}

/// Most JSON values a request body other than a definitions import may hold. Parsed values
/// take many times the bytes of their text (`[0,0,...]` sixteen times and more: a 64 MiB
/// body would cost gigabytes), and bodies are parsed before the caller's permissions in the
/// vhost are known.
const MAX_BODY_VALUES: usize = 100_000;

/// At most how many JSON values `text` holds: one more than its `,`, `:`, `[` and `{`
/// outside strings. A linear scan that allocates nothing.
fn json_values(text: &[u8]) -> usize {
    let (mut n, mut in_str, mut esc) = (1usize, false, false);
    for &c in text {
        if in_str {
            match c {
                _ if esc => esc = false,
                b'\\' => esc = true,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => in_str = true,
                b',' | b':' | b'[' | b'{' => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// A request body as JSON; an empty body counts as `{}` (RabbitMQ's clients send none for
/// some PUTs). Refused unparsed when it holds more than [`MAX_BODY_VALUES`] values.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    if json_values(body) > MAX_BODY_VALUES {
        return Err(ApiError::BadRequest(format!(
            "request body has more than {MAX_BODY_VALUES} JSON values"
        )));
    }
    parse_any_body(body)
}

/// [`parse_body`] without the limit on values (definitions imports, administrators only).
pub(crate) fn parse_any_body<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let v: serde_json::Value =
        serde_json::from_slice(text).map_err(|_| ApiError::BadRequest("not_json".into()))?;
    serde_json::from_value(v).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// A boolean field as RabbitMQ's API takes it: `true`/`false` or the strings `"true"` /
/// `"false"` (rabbitmqadmin sends those).
pub(crate) fn flag(
    m: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> ApiResult<Option<bool>> {
    use serde_json::Value;
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s == "true" => Ok(Some(true)),
        Some(Value::String(s)) if s == "false" => Ok(Some(false)),
        Some(other) => Err(ApiError::BadRequest(format!(
            "{key} must be true or false, not {other}"
        ))),
    }
}

/// A string field that must be there; RabbitMQ's `[{key_missing,K}]` otherwise.
pub(crate) fn required_str(
    m: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> ApiResult<String> {
    m.get(key)
        .and_then(serde_json::Value::as_str)
        .map(String::from)
        .ok_or_else(|| ApiError::BadRequest(format!("[{{key_missing,{key}}}]")))
}

/// An object field (`arguments`, `definition`); absent is empty.
pub(crate) fn object(
    m: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> ApiResult<serde_json::Map<String, serde_json::Value>> {
    use serde_json::Value;
    match m.get(key) {
        None | Some(Value::Null) => Ok(Default::default()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(_) => Err(ApiError::BadRequest(format!("{key} must be an object"))),
    }
}

/// The vhosts the caller may see: every one for monitoring users and administrators, else
/// those it has permissions on.
pub(crate) fn visible_vhosts(api: &Api, caller: &Caller) -> Vec<Arc<VHost>> {
    let mut v: Vec<Arc<VHost>> = api
        .broker
        .vhosts()
        .into_iter()
        .filter(|v| caller.is_monitor() || api.broker.may_use_vhost(&caller.user, &v.name))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// A vhost the caller may look into: 404 if it does not exist, 401 if it is not theirs.
pub(crate) fn visible_vhost(api: &Api, caller: &Caller, name: &str) -> ApiResult<Arc<VHost>> {
    let v = api.broker.vhost(name).ok_or(ApiError::NotFound)?;
    if caller.is_monitor() || api.broker.may_use_vhost(&caller.user, name) {
        Ok(v)
    } else {
        Err(ApiError::NotAuthorised(
            "User not authorised to access virtual host".into(),
        ))
    }
}

/// A session for the caller in `vhost`, for changes (404 for an unknown vhost).
pub(crate) fn session(api: &Api, caller: &Caller, vhost: &str) -> ApiResult<ferrymq_core::Session> {
    if api.broker.vhost(vhost).is_none() {
        return Err(ApiError::NotFound);
    }
    Ok(api.broker.api_session(&caller.user, vhost)?)
}

/// `true` for RabbitMQ's boolean query values.
pub(crate) fn truthy(v: Option<&String>) -> bool {
    v.is_some_and(|s| s == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_counts_structure_outside_strings() {
        assert_eq!(json_values(b"{}"), 2);
        assert_eq!(json_values(br#"{"a":[1,2,3]}"#), 6);
        // Commas, colons and brackets inside strings (escaped quotes too) do not count.
        assert_eq!(json_values(br#"{"a":"x,[{:\",y"}"#), 3);
    }

    #[test]
    fn bodies_with_too_many_values_are_refused_before_parsing() {
        let many = format!(
            "{{\"arguments\":{{\"x\":[{}0]}}}}",
            "0,".repeat(MAX_BODY_VALUES)
        );
        let r: ApiResult<serde_json::Map<String, serde_json::Value>> =
            parse_body(&Bytes::from(many.clone()));
        assert!(matches!(r, Err(ApiError::BadRequest(m)) if m.contains("JSON values")));
        let r: ApiResult<serde_json::Value> = parse_any_body(&Bytes::from(many));
        assert!(r.is_ok());
        // A long string is one value: a large payload stays fine.
        let long = format!("{{\"payload\":\"{}\"}}", "a,b:[".repeat(1_000_000));
        let r: ApiResult<serde_json::Map<String, serde_json::Value>> =
            parse_body(&Bytes::from(long));
        assert!(r.is_ok());
    }
}
