//! `list`: every object type the API lists, walking its pages so that no answer holds more
//! than one page.

use super::client::{api_path, with_query};
use super::error::{CtlError, CtlResult};
use super::output::{cell_text, lookup, ListWriter};
use super::{write_error, Ctx};
use serde_json::Value;
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
    /// Whether the API pages and sorts it (`page`, `sort`).
    paged: bool,
    /// Field `--name` matches: the API filters paged lists by `name`; lists without one
    /// (bindings, consumers) and lists served whole are filtered here on this field.
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
    // Objects without a name (bindings, consumers) are matched here, page by page.
    let filter_here = name_field != "name";
    let here = if filter_here { name_regex(a)? } else { None };
    if let (Some(n), false) = (&a.name, filter_here) {
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
    let mut rows: u64 = 0;
    loop {
        let mut q = query.clone();
        q.push(("page", page.to_string()));
        q.push(("page_size", size.to_string()));
        let answer = ctx.client.get_json(&with_query(path, &q))?;
        let (items, page_count, fetched) = match answer {
            // An API that does not page this list (RabbitMQ's bindings and consumers) answers
            // the whole array, unfiltered: do here what it did not.
            Value::Array(mut items) => {
                let fetched = items.len();
                filter_sort_page(&mut items, a, name_field)?;
                (items, page, fetched)
            }
            Value::Object(mut m) => {
                let mut items = match m.remove("items") {
                    Some(Value::Array(items)) => items,
                    _ => return Err(CtlError::Failed(format!("{path}: a page without items"))),
                };
                let fetched = items.len();
                if let Some(re) = &here {
                    items.retain(|i| re.is_match(&cell_text(lookup(i, name_field))));
                }
                let count = m.get("page_count").and_then(Value::as_u64).unwrap_or(1);
                (items, u32::try_from(count).unwrap_or(u32::MAX), fetched)
            }
            _ => return Err(CtlError::Failed(format!("{path} did not answer a list"))),
        };
        rows += fetched as u64;
        if rows > MAX_ROWS {
            // A server that claims pages without end must not keep ctl walking (and, for a
            // table, buffering) for ever.
            return Err(CtlError::Failed(format!(
                "{path}: more than {MAX_ROWS} rows; narrow the list with --name or --page"
            )));
        }
        for i in &items {
            w.push(i).map_err(write_error)?;
        }
        // A list that shrinks while it is walked ends early rather than asking past its end;
        // a short page is the last one whatever `page_count` says.
        if only_one || page >= page_count || fetched == 0 || (fetched as u64) < u64::from(size) {
            return Ok(());
        }
        page += 1;
    }
}

/// Most rows one list walks (10 million: far above any real broker's list).
const MAX_ROWS: u64 = 10_000_000;

/// `--name` as a regex with a bounded compiled size.
fn name_regex(a: &ListArgs) -> CtlResult<Option<regex::Regex>> {
    a.name
        .as_deref()
        .map(|n| {
            regex::RegexBuilder::new(n)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| CtlError::Usage(format!("--name is not a valid regex: {e}")))
        })
        .transpose()
}

/// `--name`, `--sort`, `--page` done here for the lists the API serves whole.
fn filter_sort_page(items: &mut Vec<Value>, a: &ListArgs, name_field: &str) -> CtlResult<()> {
    if let Some(re) = name_regex(a)? {
        items.retain(|i| re.is_match(&cell_text(lookup(i, name_field))));
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
