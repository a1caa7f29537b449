//! Objects of the API: `list`, `declare`, `delete`, `purge queue`, `close connection`.

use super::client::{api_path, with_query, Method};
use super::error::{CtlError, CtlResult};
use super::output::{lookup, ListWriter};
use super::{json_object, write_error, Ctx};
use serde_json::{json, Map, Value};
use std::io::Write;

/// Most items one page of a server-side paged list holds (RabbitMQ's limit).
const MAX_PAGE_SIZE: u32 = 500;
/// Longest `--name` regex sent or compiled (the API refuses longer ones too).
const MAX_NAME_FILTER: usize = 1024;

/// Object types `list` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Queues.
    #[value(alias = "queue")]
    Queues,
    /// Exchanges.
    #[value(alias = "exchange")]
    Exchanges,
    /// Bindings.
    #[value(alias = "binding")]
    Bindings,
    /// Users.
    #[value(alias = "user")]
    Users,
    /// Virtual hosts.
    #[value(alias = "vhost")]
    Vhosts,
    /// Permissions (user × vhost).
    #[value(alias = "permission")]
    Permissions,
    /// Topic permissions (user × vhost × exchange).
    #[value(alias = "topic-permission", alias = "topic_permissions")]
    TopicPermissions,
    /// Policies.
    #[value(alias = "policy")]
    Policies,
    /// Per-vhost limits.
    #[value(alias = "vhost-limit", alias = "vhost_limits")]
    VhostLimits,
    /// Per-user limits.
    #[value(alias = "user-limit", alias = "user_limits")]
    UserLimits,
    /// Client connections.
    #[value(alias = "connection")]
    Connections,
    /// Channels.
    #[value(alias = "channel")]
    Channels,
    /// Consumers.
    #[value(alias = "consumer")]
    Consumers,
    /// Nodes.
    #[value(alias = "node")]
    Nodes,
}

/// How the API serves one kind of object.
struct KindInfo {
    /// Path of the list of every vhost's (or of the broker's).
    all: &'static str,
    /// Path of one vhost's list; `None` for objects outside vhosts.
    vhost: Option<fn(&str) -> String>,
    /// Whether the API pages, sorts and filters it (`page`, `name`, `sort`).
    paged: bool,
    /// Field the client-side `--name` filter looks at when the API does not filter.
    name_field: &'static str,
    /// Default columns (`vhost` is put first when every vhost is listed).
    columns: &'static [&'static str],
}

impl Kind {
    fn info(self) -> KindInfo {
        let k = |all, vhost, paged, name_field, columns| KindInfo {
            all,
            vhost,
            paged,
            name_field,
            columns,
        };
        match self {
            Kind::Queues => k(
                "/api/queues",
                Some(|v| api_path(&["queues", v])),
                true,
                "name",
                &["name", "type", "durable", "messages", "consumers"],
            ),
            Kind::Exchanges => k(
                "/api/exchanges",
                Some(|v| api_path(&["exchanges", v])),
                true,
                "name",
                &["name", "type", "durable"],
            ),
            Kind::Bindings => k(
                "/api/bindings",
                Some(|v| api_path(&["bindings", v])),
                true,
                "source",
                &[
                    "source",
                    "destination",
                    "destination_type",
                    "routing_key",
                    "properties_key",
                ],
            ),
            Kind::Users => k("/api/users", None, false, "name", &["name", "tags"]),
            Kind::Vhosts => k("/api/vhosts", None, false, "name", &["name", "messages"]),
            Kind::Permissions => k(
                "/api/permissions",
                Some(|v| api_path(&["vhosts", v, "permissions"])),
                false,
                "user",
                &["user", "configure", "write", "read"],
            ),
            Kind::TopicPermissions => k(
                "/api/topic-permissions",
                Some(|v| api_path(&["vhosts", v, "topic-permissions"])),
                false,
                "user",
                &["user", "exchange", "write", "read"],
            ),
            Kind::Policies => k(
                "/api/policies",
                Some(|v| api_path(&["policies", v])),
                false,
                "name",
                &["name", "pattern", "apply-to", "priority", "definition"],
            ),
            Kind::VhostLimits => k(
                "/api/vhost-limits",
                Some(|v| api_path(&["vhost-limits", v])),
                false,
                "vhost",
                &["vhost", "value"],
            ),
            Kind::UserLimits => k("/api/user-limits", None, false, "user", &["user", "value"]),
            Kind::Connections => k(
                "/api/connections",
                Some(|v| api_path(&["vhosts", v, "connections"])),
                true,
                "name",
                &["name", "user", "channels", "state"],
            ),
            Kind::Channels => k(
                "/api/channels",
                Some(|v| api_path(&["vhosts", v, "channels"])),
                true,
                "name",
                &["name", "user", "consumer_count", "messages_unacknowledged"],
            ),
            Kind::Consumers => k(
                "/api/consumers",
                Some(|v| api_path(&["consumers", v])),
                true,
                "consumer_tag",
                &[
                    "queue.name",
                    "consumer_tag",
                    "channel_details.name",
                    "ack_required",
                    "prefetch_count",
                ],
            ),
            Kind::Nodes => k(
                "/api/nodes",
                None,
                false,
                "name",
                &["name", "type", "mem_used"],
            ),
        }
    }
}

/// `list` arguments.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// What to list.
    #[arg(value_enum)]
    what: Kind,
    /// Only names matching this regex (sent to the API as name + use_regex=true).
    #[arg(long, value_name = "REGEX")]
    name: Option<String>,
    /// Sort by this field (a dotted path such as message_stats.publish).
    #[arg(long, value_name = "FIELD")]
    sort: Option<String>,
    /// Reverse the order.
    #[arg(long)]
    sort_reverse: bool,
    /// Only this page (1-based) instead of the whole list.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    page: Option<u32>,
    /// Items per page: with --page, that page's size [default 100]; without it, how many
    /// items each request fetches while walking the whole list [default 500, at most 500].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_PAGE_SIZE as i64))]
    page_size: Option<u32>,
}

/// Lists `a.what`, walking the API's pages so that no answer holds more than one page.
pub(crate) fn list(ctx: &Ctx, a: &ListArgs) -> CtlResult<()> {
    let info = a.what.info();
    if a.name.as_ref().is_some_and(|n| n.len() > MAX_NAME_FILTER) {
        return Err(CtlError::Usage(format!(
            "--name is longer than {MAX_NAME_FILTER} bytes"
        )));
    }
    let scoped = match (info.vhost, &ctx.vhost) {
        (Some(path), Some(v)) => Some(path(v)),
        _ => None,
    };
    let mut defaults: Vec<&str> = info.columns.to_vec();
    if info.vhost.is_some() && scoped.is_none() && !defaults.contains(&"vhost") {
        defaults.insert(0, "vhost");
    }
    let columns = ctx.columns_or(&defaults);
    let whole = ctx.columns.is_empty() && ctx.format == super::Format::Json;
    let path = scoped.unwrap_or_else(|| info.all.to_string());
    let out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut w = ListWriter::new(out, ctx.format, columns.clone(), whole).map_err(write_error)?;
    if info.paged {
        list_paged(ctx, a, &path, &columns, whole, info.name_field, &mut w)?;
    } else {
        let all = ctx.client.get_json(&path)?;
        let Value::Array(mut items) = all else {
            return Err(CtlError::Failed(format!("{path} did not answer a list")));
        };
        filter_sort_page(&mut items, a, info.name_field)?;
        for i in &items {
            w.push(i).map_err(write_error)?;
        }
    }
    w.finish().map_err(write_error)?;
    Ok(())
}

fn list_paged<W: Write>(
    ctx: &Ctx,
    a: &ListArgs,
    path: &str,
    columns: &[String],
    whole: bool,
    name_field: &str,
    w: &mut ListWriter<W>,
) -> CtlResult<()> {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(n) = &a.name {
        query.push(("name", n.clone()));
        query.push(("use_regex", "true".into()));
    }
    if let Some(s) = &a.sort {
        query.push(("sort", s.clone()));
    }
    if a.sort_reverse {
        query.push(("sort_reverse", "true".into()));
    }
    if !whole {
        // The API leaves out every other field: far less to send for long lists. The sort
        // and name fields stay, for an API that serves this list whole (below).
        let mut keep: Vec<String> = columns.to_vec();
        keep.extend(a.sort.iter().cloned());
        keep.push(name_field.to_string());
        query.push(("columns", keep.join(",")));
    }
    let (mut page, size, only_one) = match a.page {
        Some(p) => (p, a.page_size.unwrap_or(100), true),
        None => (1, a.page_size.unwrap_or(MAX_PAGE_SIZE), false),
    };
    loop {
        let mut q = query.clone();
        q.push(("page", page.to_string()));
        q.push(("page_size", size.to_string()));
        let answer = ctx.client.get_json(&with_query(path, &q))?;
        let (items, page_count) = match answer {
            // An API that does not page this list (RabbitMQ's bindings and consumers) answers
            // the whole array, unfiltered: do here what it did not.
            Value::Array(mut items) => {
                filter_sort_page(&mut items, a, name_field)?;
                (items, page)
            }
            Value::Object(mut m) => {
                let items = match m.remove("items") {
                    Some(Value::Array(items)) => items,
                    _ => return Err(CtlError::Failed(format!("{path}: a page without items"))),
                };
                let count = m.get("page_count").and_then(Value::as_u64).unwrap_or(1);
                (items, u32::try_from(count).unwrap_or(u32::MAX))
            }
            _ => return Err(CtlError::Failed(format!("{path} did not answer a list"))),
        };
        for i in &items {
            w.push(i).map_err(write_error)?;
        }
        // A list that shrinks while it is walked ends early rather than asking past its end.
        if only_one || page >= page_count || items.is_empty() {
            return Ok(());
        }
        page += 1;
    }
}

/// `--name`, `--sort`, `--page` done here for the lists the API serves whole.
fn filter_sort_page(items: &mut Vec<Value>, a: &ListArgs, name_field: &str) -> CtlResult<()> {
    if let Some(n) = &a.name {
        let re = regex::RegexBuilder::new(n)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| CtlError::Usage(format!("--name is not a valid regex: {e}")))?;
        items.retain(|i| re.is_match(&super::output::cell_text(lookup(i, name_field))));
    }
    if let Some(s) = &a.sort {
        items.sort_by(|x, y| compare(lookup(x, s), lookup(y, s)));
    }
    if a.sort_reverse {
        items.reverse();
    }
    if let Some(p) = a.page {
        let size = a.page_size.unwrap_or(100) as usize;
        let start = (p as usize - 1).saturating_mul(size).min(items.len());
        let end = start.saturating_add(size).min(items.len());
        *items = items.drain(start..end).collect();
    }
    Ok(())
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (None | Some(Value::Null), None | Some(Value::Null)) => Ordering::Equal,
        (None | Some(Value::Null), _) => Ordering::Less,
        (_, None | Some(Value::Null)) => Ordering::Greater,
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
    }
}

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
