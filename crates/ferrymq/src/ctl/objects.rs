//! Changes to the API's objects: `declare`, `delete`, `purge queue`, `close connection`.

use super::client::{api_path, with_query, Method};
use super::error::{CtlError, CtlResult};
use super::{json_object, Ctx};
use serde_json::{json, Map, Value};

/// Where a binding leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DestinationType {
    /// A queue.
    Queue,
    /// An exchange (exchange-to-exchange binding).
    Exchange,
}

impl DestinationType {
    fn letter(self) -> &'static str {
        match self {
            DestinationType::Queue => "q",
            DestinationType::Exchange => "e",
        }
    }
}

/// The default exchange `""` is addressed as `amq.default` in paths.
fn exchange_segment(name: &str) -> &str {
    if name.is_empty() {
        "amq.default"
    } else {
        name
    }
}

/// Parses `--value` of a limit.
fn limit_value(s: &str) -> Result<i64, String> {
    s.parse::<i64>()
        .map_err(|_| format!("{s:?} is not a whole number (-1: no limit)"))
}

/// `declare` targets.
#[derive(Debug, clap::Subcommand)]
pub enum Declare {
    /// A queue in --vhost.
    Queue {
        /// Queue name.
        name: String,
        /// Survives a restart.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
        durable: bool,
        /// Deleted when its last consumer goes.
        #[arg(long)]
        auto_delete: bool,
        /// Queue type (classic, quorum, stream): sets x-queue-type.
        #[arg(long = "type", value_name = "TYPE")]
        queue_type: Option<String>,
        /// Arguments as a JSON object, e.g. '{"x-max-length": 1000}'.
        #[arg(long, value_parser = json_object, value_name = "JSON")]
        arguments: Option<Map<String, Value>>,
    },
    /// An exchange in --vhost.
    Exchange {
        /// Exchange name.
        name: String,
        /// direct, fanout, topic, headers, x-delayed-message, ...
        #[arg(long = "type", default_value = "direct", value_name = "TYPE")]
        exchange_type: String,
        /// Survives a restart.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
        durable: bool,
        /// Deleted when its last binding goes.
        #[arg(long)]
        auto_delete: bool,
        /// Only exchange-to-exchange bindings may publish to it.
        #[arg(long)]
        internal: bool,
        /// Arguments as a JSON object, e.g. '{"alternate-exchange": "unrouted"}'.
        #[arg(long, value_parser = json_object, value_name = "JSON")]
        arguments: Option<Map<String, Value>>,
    },
    /// A binding in --vhost.
    Binding {
        /// Source exchange.
        #[arg(long, value_name = "EXCHANGE")]
        source: String,
        /// Destination queue or exchange.
        #[arg(long, value_name = "NAME")]
        destination: String,
        /// What the destination is.
        #[arg(long, value_enum, default_value_t = DestinationType::Queue)]
        destination_type: DestinationType,
        /// Routing key (binding key).
        #[arg(long, default_value = "", value_name = "KEY")]
        routing_key: String,
        /// Binding arguments as a JSON object (headers exchanges: x-match and the headers).
        #[arg(long, value_parser = json_object, value_name = "JSON")]
        arguments: Option<Map<String, Value>>,
    },
    /// A user (administrator only).
    User {
        /// Login.
        name: String,
        /// The user's password in clear (--password is the login's); without it (and
        /// --password-hash) an existing user keeps its own.
        #[arg(long, value_name = "PASSWORD", conflicts_with = "password_hash")]
        user_password: Option<String>,
        /// RabbitMQ password hash (base64), instead of --password.
        #[arg(long, value_name = "HASH")]
        password_hash: Option<String>,
        /// Comma-separated tags: management, policymaker, monitoring, administrator.
        #[arg(long, default_value = "", value_name = "TAGS")]
        tags: String,
    },
    /// A virtual host (its creator gets full permissions on it).
    Vhost {
        /// Vhost name.
        name: String,
    },
    /// A user's permissions in --vhost.
    #[command(alias = "permission")]
    Permissions {
        /// The user (positional: --user is the login).
        #[arg(value_name = "USER")]
        who: String,
        /// Regex of resources the user may declare and delete.
        #[arg(long, default_value = ".*", value_name = "REGEX")]
        configure: String,
        /// Regex of resources the user may publish to.
        #[arg(long, default_value = ".*", value_name = "REGEX")]
        write: String,
        /// Regex of resources the user may consume from.
        #[arg(long, default_value = ".*", value_name = "REGEX")]
        read: String,
    },
    /// A user's topic permissions on one exchange in --vhost.
    #[command(alias = "topic-permission", alias = "topic_permission")]
    TopicPermissions {
        /// The user (positional: --user is the login).
        #[arg(value_name = "USER")]
        who: String,
        /// The topic exchange.
        #[arg(long, value_name = "EXCHANGE")]
        exchange: String,
        /// Regex of routing keys the user may publish with.
        #[arg(long, default_value = ".*", value_name = "REGEX")]
        write: String,
        /// Regex of binding keys the user may bind with.
        #[arg(long, default_value = ".*", value_name = "REGEX")]
        read: String,
    },
    /// A policy in --vhost.
    Policy {
        /// Policy name.
        name: String,
        /// Regex of the queue or exchange names it applies to.
        #[arg(long, value_name = "REGEX")]
        pattern: String,
        /// The policy's keys as a JSON object, e.g. '{"max-length": 1000}'.
        #[arg(long, value_parser = json_object, value_name = "JSON")]
        definition: Map<String, Value>,
        /// Among matching policies the highest priority wins.
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// queues, exchanges or all.
        #[arg(long, default_value = "all", value_name = "KIND")]
        apply_to: String,
    },
    /// A limit of --vhost (max-connections, max-queues).
    #[command(alias = "vhost_limit")]
    VhostLimit {
        /// Limit name.
        name: String,
        /// The limit (-1: none).
        #[arg(long, value_parser = limit_value, allow_hyphen_values = true)]
        value: i64,
    },
    /// A limit of a user (max-connections, max-channels).
    #[command(alias = "user_limit")]
    UserLimit {
        /// The user (positional: --user is the login).
        #[arg(value_name = "USER")]
        who: String,
        /// Limit name.
        name: String,
        /// The limit (-1: none).
        #[arg(long, value_parser = limit_value, allow_hyphen_values = true)]
        value: i64,
    },
}

/// Creates or updates an object.
pub(crate) fn declare(ctx: &Ctx, what: Declare) -> CtlResult<()> {
    let v = ctx.vhost();
    let c = &ctx.client;
    let done = match what {
        Declare::Queue {
            name,
            durable,
            auto_delete,
            queue_type,
            arguments,
        } => {
            let mut args = arguments.unwrap_or_default();
            if let Some(t) = queue_type {
                args.insert("x-queue-type".into(), Value::String(t));
            }
            let body = json!({"durable": durable, "auto_delete": auto_delete, "arguments": args});
            c.send_json(Method::Put, &api_path(&["queues", v, &name]), &body)?;
            format!("queue {name} declared")
        }
        Declare::Exchange {
            name,
            exchange_type,
            durable,
            auto_delete,
            internal,
            arguments,
        } => {
            let body = json!({
                "type": exchange_type, "durable": durable, "auto_delete": auto_delete,
                "internal": internal, "arguments": arguments.unwrap_or_default(),
            });
            c.send_json(Method::Put, &api_path(&["exchanges", v, &name]), &body)?;
            format!("exchange {name} declared")
        }
        Declare::Binding {
            source,
            destination,
            destination_type,
            routing_key,
            arguments,
        } => {
            let path = api_path(&[
                "bindings",
                v,
                "e",
                exchange_segment(&source),
                destination_type.letter(),
                &destination,
            ]);
            let body =
                json!({"routing_key": routing_key, "arguments": arguments.unwrap_or_default()});
            c.send_json(Method::Post, &path, &body)?;
            format!("binding {source} -> {destination} declared")
        }
        Declare::User {
            name,
            user_password,
            password_hash,
            tags,
        } => {
            let mut body = Map::new();
            body.insert("tags".into(), Value::String(tags));
            if let Some(p) = user_password {
                body.insert("password".into(), Value::String(p));
            }
            if let Some(h) = password_hash {
                body.insert("password_hash".into(), Value::String(h));
            }
            c.send_json(
                Method::Put,
                &api_path(&["users", &name]),
                &Value::Object(body),
            )?;
            format!("user {name} declared")
        }
        Declare::Vhost { name } => {
            c.send_json(Method::Put, &api_path(&["vhosts", &name]), &json!({}))?;
            format!("vhost {name} declared")
        }
        Declare::Permissions {
            who: user,
            configure,
            write,
            read,
        } => {
            let body = json!({"configure": configure, "write": write, "read": read});
            c.send_json(Method::Put, &api_path(&["permissions", v, &user]), &body)?;
            format!("permissions of {user} in {v} declared")
        }
        Declare::TopicPermissions {
            who: user,
            exchange,
            write,
            read,
        } => {
            let body = json!({"exchange": exchange, "write": write, "read": read});
            c.send_json(
                Method::Put,
                &api_path(&["topic-permissions", v, &user]),
                &body,
            )?;
            format!("topic permissions of {user} on {exchange} in {v} declared")
        }
        Declare::Policy {
            name,
            pattern,
            definition,
            priority,
            apply_to,
        } => {
            let body = json!({
                "pattern": pattern, "definition": definition, "priority": priority,
                "apply-to": apply_to,
            });
            c.send_json(Method::Put, &api_path(&["policies", v, &name]), &body)?;
            format!("policy {name} declared")
        }
        Declare::VhostLimit { name, value } => {
            let path = api_path(&["vhost-limits", v, &name]);
            c.send_json(Method::Put, &path, &json!({ "value": value }))?;
            format!("limit {name} of vhost {v} set to {value}")
        }
        Declare::UserLimit {
            name,
            who: user,
            value,
        } => {
            let path = api_path(&["user-limits", &user, &name]);
            c.send_json(Method::Put, &path, &json!({ "value": value }))?;
            format!("limit {name} of user {user} set to {value}")
        }
    };
    ctx.done(&done)
}

/// `delete` targets.
#[derive(Debug, clap::Subcommand)]
pub enum Delete {
    /// A queue in --vhost.
    Queue {
        /// Queue name.
        name: String,
        /// Only if it has no consumers.
        #[arg(long)]
        if_unused: bool,
        /// Only if it has no messages.
        #[arg(long)]
        if_empty: bool,
    },
    /// An exchange in --vhost.
    Exchange {
        /// Exchange name.
        name: String,
        /// Only if it has no bindings.
        #[arg(long)]
        if_unused: bool,
    },
    /// A binding in --vhost, by routing key (and arguments) or by its properties key.
    Binding {
        /// Source exchange.
        #[arg(long, value_name = "EXCHANGE")]
        source: String,
        /// Destination queue or exchange.
        #[arg(long, value_name = "NAME")]
        destination: String,
        /// What the destination is.
        #[arg(long, value_enum, default_value_t = DestinationType::Queue)]
        destination_type: DestinationType,
        /// Routing key of the binding.
        #[arg(long, default_value = "", value_name = "KEY")]
        routing_key: String,
        /// Arguments of the binding, when several share the routing key.
        #[arg(long, value_parser = json_object, value_name = "JSON")]
        arguments: Option<Map<String, Value>>,
        /// The binding's properties_key as `list bindings` shows it (instead of looking it
        /// up by routing key and arguments).
        #[arg(long, value_name = "KEY")]
        properties_key: Option<String>,
    },
    /// A user.
    User {
        /// Login.
        name: String,
    },
    /// A virtual host and everything in it.
    Vhost {
        /// Vhost name.
        name: String,
    },
    /// A user's permissions in --vhost.
    #[command(alias = "permission")]
    Permissions {
        /// The user (positional: --user is the login).
        #[arg(value_name = "USER")]
        who: String,
    },
    /// A user's topic permissions in --vhost.
    #[command(alias = "topic-permission", alias = "topic_permission")]
    TopicPermissions {
        /// The user (positional: --user is the login).
        #[arg(value_name = "USER")]
        who: String,
    },
    /// A policy in --vhost.
    Policy {
        /// Policy name.
        name: String,
    },
    /// A limit of --vhost.
    #[command(alias = "vhost_limit")]
    VhostLimit {
        /// Limit name.
        name: String,
    },
    /// A limit of a user.
    #[command(alias = "user_limit")]
    UserLimit {
        /// The user (positional: --user is the login).
        #[arg(value_name = "USER")]
        who: String,
        /// Limit name.
        name: String,
    },
}

/// Deletes an object.
pub(crate) fn delete(ctx: &Ctx, what: Delete) -> CtlResult<()> {
    let v = ctx.vhost();
    let c = &ctx.client;
    let flag = |on: bool| {
        if on {
            "true".to_string()
        } else {
            String::new()
        }
    };
    let done = match what {
        Delete::Queue {
            name,
            if_unused,
            if_empty,
        } => {
            let q = [("if-unused", flag(if_unused)), ("if-empty", flag(if_empty))];
            c.delete(&with_query(&api_path(&["queues", v, &name]), &q))?;
            format!("queue {name} deleted")
        }
        Delete::Exchange { name, if_unused } => {
            let q = [("if-unused", flag(if_unused))];
            c.delete(&with_query(&api_path(&["exchanges", v, &name]), &q))?;
            format!("exchange {name} deleted")
        }
        Delete::Binding {
            source,
            destination,
            destination_type,
            routing_key,
            arguments,
            properties_key,
        } => {
            let between = api_path(&[
                "bindings",
                v,
                "e",
                exchange_segment(&source),
                destination_type.letter(),
                &destination,
            ]);
            let key = match properties_key {
                Some(k) => k,
                None => find_properties_key(ctx, &between, &routing_key, arguments.as_ref())?,
            };
            c.delete(&format!("{between}/{}", urlencoding::encode(&key)))?;
            format!("binding {source} -> {destination} deleted")
        }
        Delete::User { name } => {
            c.delete(&api_path(&["users", &name]))?;
            format!("user {name} deleted")
        }
        Delete::Vhost { name } => {
            c.delete(&api_path(&["vhosts", &name]))?;
            format!("vhost {name} deleted")
        }
        Delete::Permissions { who: user } => {
            c.delete(&api_path(&["permissions", v, &user]))?;
            format!("permissions of {user} in {v} deleted")
        }
        Delete::TopicPermissions { who: user } => {
            c.delete(&api_path(&["topic-permissions", v, &user]))?;
            format!("topic permissions of {user} in {v} deleted")
        }
        Delete::Policy { name } => {
            c.delete(&api_path(&["policies", v, &name]))?;
            format!("policy {name} deleted")
        }
        Delete::VhostLimit { name } => {
            c.delete(&api_path(&["vhost-limits", v, &name]))?;
            format!("limit {name} of vhost {v} cleared")
        }
        Delete::UserLimit { name, who: user } => {
            c.delete(&api_path(&["user-limits", &user, &name]))?;
            format!("limit {name} of user {user} cleared")
        }
    };
    ctx.done(&done)
}

/// The properties_key of the binding with `routing_key` (and `arguments`, else none) among
/// those between two objects, as the API lists them.
fn find_properties_key(
    ctx: &Ctx,
    between: &str,
    routing_key: &str,
    arguments: Option<&Map<String, Value>>,
) -> CtlResult<String> {
    let list = ctx.client.get_json(between)?;
    let empty = Map::new();
    let want = arguments.unwrap_or(&empty);
    list.as_array()
        .into_iter()
        .flatten()
        .find(|b| {
            let args = b
                .get("arguments")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            b.get("routing_key").and_then(Value::as_str) == Some(routing_key) && args == want
        })
        .and_then(|b| b.get("properties_key").and_then(Value::as_str))
        .map(String::from)
        .ok_or_else(|| CtlError::Api {
            method: "DELETE",
            path: between.to_string(),
            status: 404,
            reason: format!("no binding with routing key {routing_key:?} and those arguments"),
        })
}

/// `purge` targets.
#[derive(Debug, clap::Subcommand)]
pub enum Purge {
    /// A queue in --vhost.
    Queue {
        /// Queue name.
        name: String,
    },
}

/// Purges a queue.
pub(crate) fn purge(ctx: &Ctx, what: Purge) -> CtlResult<()> {
    let Purge::Queue { name } = what;
    ctx.client
        .delete(&api_path(&["queues", ctx.vhost(), &name, "contents"]))?;
    ctx.done(&format!("queue {name} purged"))
}

/// `close` targets.
#[derive(Debug, clap::Subcommand)]
pub enum Close {
    /// A client connection, by the name `list connections` shows.
    Connection {
        /// Connection name, e.g. "127.0.0.1:50000 -> 127.0.0.1:5672".
        name: String,
        /// Text the client receives with the close.
        #[arg(long, default_value = "Closed via ferrymq ctl", value_name = "TEXT")]
        reason: String,
    },
}

/// Closes a connection.
pub(crate) fn close(ctx: &Ctx, what: Close) -> CtlResult<()> {
    let Close::Connection { name, reason } = what;
    // A header value must be visible ASCII; anything else would make the request invalid.
    let reason: String = reason
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(255)
        .collect();
    ctx.client.request(
        Method::Delete,
        &api_path(&["connections", &name]),
        None,
        &[("x-reason", &reason)],
    )?;
    ctx.done(&format!("connection {name} closed"))
}
