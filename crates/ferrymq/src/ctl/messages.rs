//! `publish`, `get` and `peek`: messages through the API's publish and get endpoints.

use super::client::{api_path, Method};
use super::error::{CtlError, CtlResult};
use super::output::ListWriter;
use super::{json_object, read_input, write_error, Ctx, Format};
use base64::Engine;
use serde_json::{json, Map, Value};
use std::path::PathBuf;

/// Largest payload `publish` reads from stdin or a file (the API's own body limit).
const MAX_PAYLOAD: u64 = 64 * 1024 * 1024;
/// Most messages one `get` asks for (the API's own limit).
const MAX_GET_COUNT: u32 = 10_000;

/// `publish` arguments.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Exchange to publish to (amq.default or "": the default exchange).
    #[arg(long, default_value = "amq.default", value_name = "EXCHANGE")]
    exchange: String,
    /// Routing key (with the default exchange: the queue name).
    #[arg(long, default_value = "", value_name = "KEY")]
    routing_key: String,
    /// The message body; without it (and --payload-file) it is read from stdin.
    #[arg(long, value_name = "TEXT", conflicts_with = "payload_file")]
    payload: Option<String>,
    /// Read the body from this file (`-`: stdin).
    #[arg(long, value_name = "FILE")]
    payload_file: Option<PathBuf>,
    /// Properties as a JSON object (content_type, headers, delivery_mode, ...); the flags
    /// below override its keys.
    #[arg(long, value_parser = json_object, value_name = "JSON")]
    properties: Option<Map<String, Value>>,
    /// Persistent (delivery_mode 2).
    #[arg(long)]
    persistent: bool,
    /// content_type property.
    #[arg(long, value_name = "TYPE")]
    content_type: Option<String>,
    /// message_id property.
    #[arg(long, value_name = "ID")]
    message_id: Option<String>,
    /// correlation_id property.
    #[arg(long, value_name = "ID")]
    correlation_id: Option<String>,
    /// reply_to property.
    #[arg(long, value_name = "QUEUE")]
    reply_to: Option<String>,
    /// expiration property (per-message TTL in ms).
    #[arg(long, value_name = "MS")]
    expiration: Option<u64>,
    /// priority property.
    #[arg(long, value_name = "N")]
    priority: Option<u8>,
    /// A header, as KEY=VALUE (a string value); repeat for more.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = header)]
    headers: Vec<(String, String)>,
}

fn header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// `req` as the request body, refused here (a usage error, as a payload over the limit is)
/// when it is over the API's body limit `max`: a payload that is not text goes as base64,
/// a third larger, so one of 48 MiB and more would otherwise come back as a 413.
fn request_body(req: &Value, max: u64) -> CtlResult<Vec<u8>> {
    let bytes = serde_json::to_vec(req)
        .map_err(|e| CtlError::Failed(format!("cannot encode the request: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(CtlError::Usage(format!(
            "the message is {} bytes as the API takes it (a payload that is not UTF-8 goes as \
             base64), more than its {max}-byte body limit",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Publishes one message and reports whether it was routed.
pub(crate) fn publish(ctx: &Ctx, a: PublishArgs) -> CtlResult<()> {
    let body: Vec<u8> = match &a.payload {
        Some(p) => p.clone().into_bytes(),
        None => read_input(a.payload_file.as_ref(), MAX_PAYLOAD, "the payload")?,
    };
    // A body that is not text goes as base64, so it arrives byte for byte.
    let (payload, encoding) = match String::from_utf8(body) {
        Ok(s) => (s, "string"),
        Err(e) => (
            base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
            "base64",
        ),
    };
    let mut props = a.properties.unwrap_or_default();
    let mut set = |k: &str, v: Value| {
        props.insert(k.to_string(), v);
    };
    if a.persistent {
        set("delivery_mode", json!(2));
    }
    if let Some(v) = a.content_type {
        set("content_type", json!(v));
    }
    if let Some(v) = a.message_id {
        set("message_id", json!(v));
    }
    if let Some(v) = a.correlation_id {
        set("correlation_id", json!(v));
    }
    if let Some(v) = a.reply_to {
        set("reply_to", json!(v));
    }
    if let Some(v) = a.expiration {
        set("expiration", json!(v.to_string()));
    }
    if let Some(v) = a.priority {
        set("priority", json!(v));
    }
    if !a.headers.is_empty() {
        let mut h = match props.remove("headers") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        for (k, v) in a.headers {
            h.insert(k, Value::String(v));
        }
        props.insert("headers".into(), Value::Object(h));
    }
    let exchange = if a.exchange.is_empty() {
        "amq.default"
    } else {
        &a.exchange
    };
    let req = json!({
        "routing_key": a.routing_key,
        "payload": payload,
        "payload_encoding": encoding,
        "properties": props,
    });
    let path = api_path(&["exchanges", ctx.vhost(), exchange, "publish"]);
    let bytes = request_body(&req, MAX_PAYLOAD)?;
    let answer = ctx
        .client
        .request(Method::Post, &path, Some(&bytes), &[])?
        .json()?;
    let routed = answer
        .get("routed")
        .and_then(Value::as_bool)
        .ok_or_else(|| {
            CtlError::Failed(format!(
                "the API's publish answer has no routed field: {answer}"
            ))
        })?;
    match ctx.format {
        Format::Json => ctx.print_object(&json!({ "routed": routed }), &["routed"]),
        _ if routed => ctx.done("message published"),
        _ => ctx.done("message published but NOT routed"),
    }
}

/// How `get`/`peek` show bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BodyAs {
    /// As text (bytes that are not UTF-8 become U+FFFD).
    Text,
    /// As base64, exactly.
    Base64,
}

/// `get` / `peek` arguments.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Queue in --vhost.
    queue: String,
    /// How many messages, at most.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_GET_COUNT as i64))]
    count: u32,
    /// Show bodies as text or base64.
    #[arg(long, value_enum, default_value_t = BodyAs::Text)]
    body: BodyAs,
    /// Show at most this many bytes of each body.
    #[arg(long, value_name = "BYTES")]
    truncate: Option<u64>,
}

/// Takes (or, with `peek`, looks at) messages.
pub(crate) fn get(ctx: &Ctx, a: &GetArgs, peek: bool) -> CtlResult<()> {
    let mut req = json!({
        "count": a.count,
        "ackmode": if peek { "ack_requeue_true" } else { "ack_requeue_false" },
        "encoding": match a.body { BodyAs::Text => "auto", BodyAs::Base64 => "base64" },
    });
    if let Some(t) = a.truncate {
        req["truncate"] = json!(t);
    }
    let path = api_path(&["queues", ctx.vhost(), &a.queue, "get"]);
    let answer = ctx.client.send_json(Method::Post, &path, &req)?.json()?;
    let Value::Array(mut messages) = answer else {
        return Err(CtlError::Failed(
            "the API's get answer is not a list".into(),
        ));
    };
    if a.body == BodyAs::Text {
        for m in &mut messages {
            as_text(m);
        }
    }
    let columns = ctx.columns_or(&[
        "exchange",
        "routing_key",
        "redelivered",
        "message_count",
        "payload_bytes",
        "payload",
    ]);
    let whole = ctx.columns.is_empty() && ctx.format == Format::Json;
    let out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut w = ListWriter::new(out, ctx.format, columns, whole).map_err(write_error)?;
    for m in &messages {
        w.push(m).map_err(write_error)?;
    }
    w.finish().map_err(write_error)?;
    Ok(())
}

/// A payload the API sent as base64 (not UTF-8) shown as text with replacement characters.
fn as_text(m: &mut Value) {
    if m.get("payload_encoding").and_then(Value::as_str) != Some("base64") {
        return;
    }
    let Some(p) = m.get("payload").and_then(Value::as_str) else {
        return;
    };
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(p) {
        m["payload"] = Value::String(String::from_utf8_lossy(&bytes).into_owned());
        m["payload_encoding"] = Value::String("string".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_over_the_api_body_limit_is_refused_before_it_is_sent() {
        let req = |n: usize| json!({"payload": "x".repeat(n), "payload_encoding": "string"});
        let fits = request_body(&req(10), 100).unwrap();
        assert!(fits.len() <= 100);
        let over = request_body(&req(100), 100).unwrap_err();
        assert!(matches!(over, CtlError::Usage(_)), "{over}");
        assert_eq!(over.exit_code(), super::super::error::EXIT_USAGE);
    }
}
