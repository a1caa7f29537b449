//! Users, vhosts, permissions, topic permissions, policies and limits: the broker's admin
//! API over HTTP, with RabbitMQ's paths, bodies and tag rules.

use super::overview::{stats_and_totals, AgeQuery};
use super::{parse_body, required_str, visible_vhost, visible_vhosts, St};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::{blocking, Api};
use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use ferrymq_core::access::{Permission, TopicPermission};
use ferrymq_core::admin::Credential;
use ferrymq_core::limits::{UserLimits, VHostLimits};
use ferrymq_core::policy::Policy;
use serde::Deserialize;
use serde_json::{json, Map, Value};

fn created(existed: bool) -> StatusCode {
    match existed {
        true => StatusCode::NO_CONTENT,
        false => StatusCode::CREATED,
    }
}

// ---- vhosts ----

fn vhost_json(api: &Api, name: &str) -> Value {
    let hist = api.rates.history(Some(name));
    let (stats, totals) = stats_and_totals(&hist, &AgeQuery::default());
    let mut v = json!({
        "name": name,
        "description": "",
        "tags": [],
        "default_queue_type": "undefined",
        "metadata": {"description": "", "tags": []},
        "tracing": api.broker.vhost(name).is_some_and(|v| v.tracing()),
        "cluster_state": {api.node.clone(): "running"},
        "message_stats": stats,
    });
    if let (Some(o), Value::Object(t)) = (v.as_object_mut(), totals) {
        o.extend(t);
    }
    v
}

/// GET /api/vhosts.
pub(crate) async fn vhosts(
    axum::extract::State(api): St,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let vs = visible_vhosts(&api, &caller);
        Ok(Json(Value::Array(
            vs.iter().map(|v| vhost_json(&api, &v.name)).collect(),
        )))
    })
    .await
}

/// GET /api/vhosts/{vhost}.
pub(crate) async fn vhost(
    axum::extract::State(api): St,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let v = visible_vhost(&api, &caller, &name)?;
        Ok(Json(vhost_json(&api, &v.name)))
    })
    .await
}

/// PUT /api/vhosts/{vhost}: creates it and gives the creator full permissions on it, as
/// RabbitMQ does.
pub(crate) async fn put_vhost(
    axum::extract::State(api): St,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    let body: Map<String, Value> = parse_body(&body)?;
    // RabbitMQ switches the firehose with this body's `tracing` (its `trace_on`/`off`).
    let tracing = match body.get("tracing") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(ApiError::BadRequest("tracing must be true or false".into())),
    };
    blocking(move || {
        let existed = api.broker.vhost(&name).is_some();
        api.broker.add_vhost(&name)?;
        if !existed {
            api.broker
                .set_permissions(&caller.user, &name, Permission::all())?;
        }
        if let (Some(on), Some(v)) = (tracing, api.broker.vhost(&name)) {
            v.set_tracing(on);
        }
        Ok(created(existed))
    })
    .await
}

/// DELETE /api/vhosts/{vhost}.
pub(crate) async fn delete_vhost(
    axum::extract::State(api): St,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    blocking(move || {
        api.broker.vhost(&name).ok_or(ApiError::NotFound)?;
        api.broker.delete_vhost(&name)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

// ---- users ----

fn user_json(u: &ferrymq_core::auth::User) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": u.tags,
        "limits": u.limits.to_json(),
    })
}

/// GET /api/users.
pub(crate) async fn users(axum::extract::State(api): St, caller: Caller) -> ApiResult<Json<Value>> {
    caller.need_admin()?;
    Ok(Json(Value::Array(
        api.broker.users().iter().map(user_json).collect(),
    )))
}

/// GET /api/users/without-permissions.
pub(crate) async fn users_without_permissions(
    axum::extract::State(api): St,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.need_admin()?;
    let perms = api.broker.permissions();
    Ok(Json(Value::Array(
        api.broker
            .users()
            .iter()
            .filter(|u| !perms.iter().any(|p| p.user == u.name))
            .map(user_json)
            .collect(),
    )))
}

/// GET /api/users/{user}.
pub(crate) async fn user(
    axum::extract::State(api): St,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.need_admin()?;
    api.broker
        .users()
        .iter()
        .find(|u| u.name == name)
        .map(|u| Json(user_json(u)))
        .ok_or(ApiError::NotFound)
}

/// Tags as RabbitMQ accepts them: a comma-separated string or a list.
fn parse_tags(v: Option<&Value>) -> ApiResult<Vec<String>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .map(String::from)
                    .ok_or_else(|| ApiError::BadRequest("tags must be strings".into()))
            })
            .collect(),
        Some(_) => Err(ApiError::BadRequest(
            "tags must be a string or a list".into(),
        )),
    }
}

/// PUT /api/users/{user}: `password` or `password_hash`, and `tags`. Without either
/// password field an existing user keeps its password.
pub(crate) async fn put_user(
    axum::extract::State(api): St,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    let b: Map<String, Value> = parse_body(&body)?;
    let tags = parse_tags(b.get("tags"))?;
    let text = |k: &str| b.get(k).and_then(Value::as_str).map(String::from);
    let (password, hash) = (text("password"), text("password_hash"));
    blocking(move || {
        let existing = api.broker.users().into_iter().find(|u| u.name == name);
        let credential = match (password, hash) {
            (Some(p), _) => Credential::Password(p),
            (None, Some(h)) => Credential::Hash(h),
            (None, None) => match &existing {
                Some(u) => Credential::Hash(u.password_hash.clone()),
                None => Credential::None,
            },
        };
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        api.broker.put_user(&name, credential, &tags)?;
        Ok(created(existing.is_some()))
    })
    .await
}

/// DELETE /api/users/{user}.
pub(crate) async fn delete_user(
    axum::extract::State(api): St,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    blocking(move || {
        api.broker.delete_user(&name)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// POST /api/users/bulk-delete: `{"users": [...]}`.
pub(crate) async fn users_bulk_delete(
    axum::extract::State(api): St,
    caller: Caller,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    #[derive(Deserialize)]
    struct Bulk {
        users: Vec<String>,
    }
    let b: Bulk = parse_body(&body)?;
    blocking(move || {
        for u in b.users {
            match api.broker.delete_user(&u) {
                Ok(()) | Err(ferrymq_core::CoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

// ---- permissions ----

fn permission_json(user: &str, vhost: &str, p: &Permission) -> Value {
    json!({"user": user, "vhost": vhost, "configure": p.configure, "write": p.write, "read": p.read})
}

fn permissions_where(api: &Api, keep: impl Fn(&str, &str) -> bool) -> Value {
    Value::Array(
        api.broker
            .permissions()
            .iter()
            .filter(|p| keep(&p.user, &p.vhost))
            .map(|p| permission_json(&p.user, &p.vhost, &p.permission))
            .collect(),
    )
}

/// GET /api/permissions.
pub(crate) async fn permissions(
    axum::extract::State(api): St,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.need_admin()?;
    Ok(Json(permissions_where(&api, |_, _| true)))
}

/// GET /api/vhosts/{vhost}/permissions.
pub(crate) async fn vhost_permissions(
    axum::extract::State(api): St,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.need_admin()?;
    api.broker.vhost(&vhost).ok_or(ApiError::NotFound)?;
    Ok(Json(permissions_where(&api, |_, v| v == vhost)))
}

/// GET /api/users/{user}/permissions.
pub(crate) async fn user_permissions(
    axum::extract::State(api): St,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.need_admin()?;
    if api.broker.user_tags(&user).is_none() {
        return Err(ApiError::NotFound);
    }
    Ok(Json(permissions_where(&api, |u, _| u == user)))
}

/// GET /api/permissions/{vhost}/{user}.
pub(crate) async fn permission(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.need_admin()?;
    api.broker
        .permissions()
        .iter()
        .find(|p| p.user == user && p.vhost == vhost)
        .map(|p| Json(permission_json(&p.user, &p.vhost, &p.permission)))
        .ok_or(ApiError::NotFound)
}

/// The three regexes of a permission body (all required, as in RabbitMQ).
fn permission_body(b: &Map<String, Value>) -> ApiResult<Permission> {
    Ok(Permission {
        configure: required_str(b, "configure")?,
        write: required_str(b, "write")?,
        read: required_str(b, "read")?,
    })
}

/// PUT /api/permissions/{vhost}/{user}.
pub(crate) async fn put_permission(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    let p = permission_body(&parse_body(&body)?)?;
    blocking(move || {
        api.broker.vhost(&vhost).ok_or(ApiError::NotFound)?;
        api.broker.user_tags(&user).ok_or(ApiError::NotFound)?;
        let existed = api.broker.may_use_vhost(&user, &vhost);
        api.broker.set_permissions(&user, &vhost, p)?;
        Ok(created(existed))
    })
    .await
}

/// DELETE /api/permissions/{vhost}/{user}.
pub(crate) async fn delete_permission(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    blocking(move || {
        api.broker.clear_permissions(&user, &vhost)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

// ---- topic permissions ----

fn all_topic_permissions(api: &Api) -> Vec<(String, String, TopicPermission)> {
    let mut out = Vec::new();
    for u in api.broker.users() {
        for v in api.broker.vhosts() {
            for t in api.broker.topic_permissions(&u.name, &v.name) {
                out.push((u.name.clone(), v.name.clone(), t));
            }
        }
    }
    out
}

fn topic_json(user: &str, vhost: &str, t: &TopicPermission) -> Value {
    json!({"user": user, "vhost": vhost, "exchange": t.exchange, "write": t.write, "read": t.read})
}

/// The topic permissions whose (user, vhost) `keep` accepts, as JSON.
async fn topic_permissions_where(
    api: std::sync::Arc<Api>,
    keep: impl Fn(&str, &str) -> bool + Send + 'static,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        Ok(Json(Value::Array(
            all_topic_permissions(&api)
                .iter()
                .filter(|(u, v, _)| keep(u, v))
                .map(|(u, v, t)| topic_json(u, v, t))
                .collect(),
        )))
    })
    .await
}

/// GET /api/topic-permissions.
pub(crate) async fn topic_permissions(
    axum::extract::State(api): St,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.need_admin()?;
    topic_permissions_where(api, |_, _| true).await
}

/// GET /api/vhosts/{vhost}/topic-permissions.
pub(crate) async fn vhost_topic_permissions(
    axum::extract::State(api): St,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.need_admin()?;
    api.broker.vhost(&vhost).ok_or(ApiError::NotFound)?;
    topic_permissions_where(api, move |_, v| v == vhost).await
}

/// GET /api/users/{user}/topic-permissions.
pub(crate) async fn user_topic_permissions(
    axum::extract::State(api): St,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.need_admin()?;
    api.broker.user_tags(&user).ok_or(ApiError::NotFound)?;
    topic_permissions_where(api, move |u, _| u == user).await
}

/// GET /api/topic-permissions/{vhost}/{user}.
pub(crate) async fn topic_permission(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.need_admin()?;
    let list = api.broker.topic_permissions(&user, &vhost);
    if list.is_empty() {
        return Err(ApiError::NotFound);
    }
    Ok(Json(Value::Array(
        list.iter().map(|t| topic_json(&user, &vhost, t)).collect(),
    )))
}

/// PUT /api/topic-permissions/{vhost}/{user}: `exchange`, `write`, `read`.
pub(crate) async fn put_topic_permission(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    let b: Map<String, Value> = parse_body(&body)?;
    let t = TopicPermission {
        exchange: required_str(&b, "exchange")?,
        write: required_str(&b, "write")?,
        read: required_str(&b, "read")?,
    };
    blocking(move || {
        api.broker.vhost(&vhost).ok_or(ApiError::NotFound)?;
        api.broker.user_tags(&user).ok_or(ApiError::NotFound)?;
        let existed = api
            .broker
            .topic_permissions(&user, &vhost)
            .iter()
            .any(|x| x.exchange == t.exchange);
        api.broker.set_topic_permissions(&user, &vhost, t)?;
        Ok(created(existed))
    })
    .await
}

/// DELETE /api/topic-permissions/{vhost}/{user} (all of the user's in the vhost).
pub(crate) async fn delete_topic_permission(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    blocking(move || {
        api.broker.clear_topic_permissions(&user, &vhost, None)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

// ---- policies ----

fn policy_json(vhost: &str, p: &Policy) -> Value {
    json!({
        "vhost": vhost,
        "name": p.name,
        "pattern": p.pattern.as_str(),
        "apply-to": p.apply_to.as_str(),
        "definition": p.definition,
        "priority": p.priority,
    })
}

fn policies_of(api: &Api, caller: &Caller, vhost: Option<&str>) -> ApiResult<Value> {
    let vs = match vhost {
        Some(v) => vec![visible_vhost(api, caller, v)?],
        None => visible_vhosts(api, caller),
    };
    let mut out = Vec::new();
    for v in vs {
        let mut ps = v.policies();
        ps.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(ps.iter().map(|p| policy_json(&v.name, p)));
    }
    Ok(Value::Array(out))
}

/// GET /api/policies.
pub(crate) async fn policies(
    axum::extract::State(api): St,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    policies_of(&api, &caller, None).map(Json)
}

/// GET /api/policies/{vhost}.
pub(crate) async fn vhost_policies(
    axum::extract::State(api): St,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    policies_of(&api, &caller, Some(&vhost)).map(Json)
}

/// GET /api/policies/{vhost}/{name}.
pub(crate) async fn policy(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let v = visible_vhost(&api, &caller, &vhost)?;
    v.policies()
        .iter()
        .find(|p| p.name == name)
        .map(|p| Json(policy_json(&v.name, p)))
        .ok_or(ApiError::NotFound)
}

/// The vhost a policymaker may change policies in (it needs permissions there).
fn policy_vhost(api: &Api, caller: &Caller, vhost: &str) -> ApiResult<()> {
    caller.need_policymaker()?;
    api.broker.vhost(vhost).ok_or(ApiError::NotFound)?;
    if !api.broker.may_use_vhost(&caller.user, vhost) {
        return Err(ApiError::NotAuthorised(
            "User not authorised to access virtual host".into(),
        ));
    }
    Ok(())
}

/// PUT /api/policies/{vhost}/{name}: `pattern`, `definition`, `priority`, `apply-to`.
pub(crate) async fn put_policy(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    policy_vhost(&api, &caller, &vhost)?;
    let b: Map<String, Value> = parse_body(&body)?;
    let pattern = required_str(&b, "pattern")?;
    let definition = match b.get("definition") {
        Some(Value::Object(m)) => m.clone(),
        _ => return Err(ApiError::BadRequest("[{key_missing,definition}]".into())),
    };
    let priority = match b.get("priority") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| ApiError::BadRequest("priority must be an integer".into()))?,
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| ApiError::BadRequest("priority must be an integer".into()))?,
        Some(_) => return Err(ApiError::BadRequest("priority must be an integer".into())),
    };
    let apply_to = b
        .get("apply-to")
        .and_then(Value::as_str)
        .unwrap_or("all")
        .to_string();
    blocking(move || {
        let p = Policy::new(&name, &pattern, &apply_to, priority, definition)?;
        let existed = api
            .broker
            .vhost(&vhost)
            .is_some_and(|v| v.policies().iter().any(|x| x.name == name));
        api.broker.set_policy(&vhost, p)?;
        Ok(created(existed))
    })
    .await
}

/// DELETE /api/policies/{vhost}/{name}.
pub(crate) async fn delete_policy(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    policy_vhost(&api, &caller, &vhost)?;
    blocking(move || {
        api.broker.clear_policy(&vhost, &name)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

// ---- limits ----

fn vhost_limits_json(api: &Api, only: Option<&str>) -> Value {
    let mut vs: Vec<String> = api.broker.vhosts().iter().map(|v| v.name.clone()).collect();
    vs.sort();
    Value::Array(
        vs.iter()
            .filter(|v| only.is_none_or(|o| o == v.as_str()))
            .filter_map(|v| {
                let l = api.broker.vhost_limits(v);
                (!l.is_empty()).then(|| json!({"vhost": v, "value": l.to_json()}))
            })
            .collect(),
    )
}

/// GET /api/vhost-limits.
pub(crate) async fn vhost_limits(
    axum::extract::State(api): St,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.need_admin()?;
    Ok(Json(vhost_limits_json(&api, None)))
}

/// GET /api/vhost-limits/{vhost}.
pub(crate) async fn vhost_limits_of(
    axum::extract::State(api): St,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    visible_vhost(&api, &caller, &vhost)?;
    Ok(Json(vhost_limits_json(&api, Some(&vhost))))
}

/// The `value` of a limit PUT.
fn limit_value(body: &Bytes) -> ApiResult<Value> {
    let b: Map<String, Value> = parse_body(body)?;
    b.get("value")
        .cloned()
        .ok_or_else(|| ApiError::BadRequest("[{key_missing,value}]".into()))
}

/// PUT /api/vhost-limits/{vhost}/{name}: `{"value": n}` (a negative value removes it).
pub(crate) async fn put_vhost_limit(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    let value = limit_value(&body)?;
    blocking(move || {
        api.broker.vhost(&vhost).ok_or(ApiError::NotFound)?;
        let mut m = api.broker.vhost_limits(&vhost).to_json();
        m.insert(name, value);
        let limits = VHostLimits::from_json(&m)?;
        api.broker.set_vhost_limits(&vhost, limits)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// DELETE /api/vhost-limits/{vhost}/{name}.
pub(crate) async fn delete_vhost_limit(
    axum::extract::State(api): St,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    blocking(move || {
        api.broker.vhost(&vhost).ok_or(ApiError::NotFound)?;
        let mut m = api.broker.vhost_limits(&vhost).to_json();
        m.remove(&name);
        api.broker
            .set_vhost_limits(&vhost, VHostLimits::from_json(&m)?)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

fn user_limits_json(api: &Api, only: Option<&str>) -> Value {
    Value::Array(
        api.broker
            .users()
            .iter()
            .filter(|u| only.is_none_or(|o| o == u.name))
            .filter(|u| !u.limits.to_json().is_empty())
            .map(|u| json!({"user": u.name, "value": u.limits.to_json()}))
            .collect(),
    )
}

/// GET /api/user-limits.
pub(crate) async fn user_limits(
    axum::extract::State(api): St,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.need_admin()?;
    Ok(Json(user_limits_json(&api, None)))
}

/// GET /api/user-limits/{user}.
pub(crate) async fn user_limits_of(
    axum::extract::State(api): St,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    if user != caller.user {
        caller.need_admin()?;
    }
    Ok(Json(user_limits_json(&api, Some(&user))))
}

fn change_user_limit(
    api: &Api,
    user: &str,
    f: impl FnOnce(&mut Map<String, Value>),
) -> ApiResult<()> {
    let u = api
        .broker
        .users()
        .into_iter()
        .find(|u| u.name == user)
        .ok_or(ApiError::NotFound)?;
    let mut m = u.limits.to_json();
    f(&mut m);
    api.broker
        .set_user_limits(user, UserLimits::from_json(&m)?)?;
    Ok(())
}

/// PUT /api/user-limits/{user}/{name}: `{"value": n}`.
pub(crate) async fn put_user_limit(
    axum::extract::State(api): St,
    caller: Caller,
    Path((user, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    let value = limit_value(&body)?;
    blocking(move || {
        change_user_limit(&api, &user, |m| {
            m.insert(name, value);
        })?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// DELETE /api/user-limits/{user}/{name}.
pub(crate) async fn delete_user_limit(
    axum::extract::State(api): St,
    caller: Caller,
    Path((user, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.need_admin()?;
    blocking(move || {
        change_user_limit(&api, &user, |m| {
            m.remove(&name);
        })?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
