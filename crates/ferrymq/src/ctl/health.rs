//! `status`, `health` and `trace`: the overview, the API's health checks, firehose tracing.

use super::client::{api_path, Method};
use super::error::{CtlError, CtlResult};
use super::output::ListWriter;
use super::{write_error, Ctx, Format};
use serde_json::{json, Value};

/// Prints a summary of /api/overview.
pub(crate) fn status(ctx: &Ctx) -> CtlResult<()> {
    let mut o = ctx.client.get_json("/api/overview")?;
    // One readable field for the listeners, which the API gives as a list of objects.
    let listening: Vec<String> = o
        .get("listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|l| {
            format!(
                "{}:{}",
                l.get("protocol").and_then(Value::as_str).unwrap_or("?"),
                l.get("port").map(|p| p.to_string()).unwrap_or_default()
            )
        })
        .collect();
    if let Value::Object(m) = &mut o {
        m.insert("listening".into(), json!(listening.join(" ")));
    }
    ctx.print_object(
        &o,
        &[
            "product_name",
            "product_version",
            "rabbitmq_version",
            "node",
            "listening",
            "object_totals.connections",
            "object_totals.channels",
            "object_totals.consumers",
            "object_totals.queues",
            "object_totals.exchanges",
            "queue_totals.messages",
            "queue_totals.messages_ready",
            "queue_totals.messages_unacknowledged",
            "message_stats.publish",
            "message_stats.deliver_get",
        ],
    )
}

/// `health` arguments.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Check that this port has a listener; repeat for more [default: every port the
    /// overview lists].
    #[arg(long = "listener-port", value_name = "PORT")]
    listener_ports: Vec<u16>,
}

/// Runs the health checks; any failure is exit code 7.
pub(crate) fn health(ctx: &Ctx, a: &HealthArgs) -> CtlResult<()> {
    let ports: Vec<u16> = if a.listener_ports.is_empty() {
        let o = ctx.client.get_json("/api/overview")?;
        o.get("listeners")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|l| l.get("port").and_then(Value::as_u64))
            .filter_map(|p| u16::try_from(p).ok())
            .collect()
    } else {
        a.listener_ports.clone()
    };
    let mut checks = vec![
        (
            "alarms".to_string(),
            "/api/health/checks/alarms".to_string(),
        ),
        (
            "virtual-hosts".to_string(),
            "/api/health/checks/virtual-hosts".to_string(),
        ),
    ];
    for p in ports {
        checks.push((
            format!("port-listener {p}"),
            format!("/api/health/checks/port-listener/{p}"),
        ));
    }
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for (name, path) in checks {
        let r = ctx.client.call(Method::Get, &path, None, &[])?;
        let body = r.json().unwrap_or(Value::Null);
        let ok = match r.status {
            200..=299 => body.get("status").and_then(Value::as_str) != Some("failed"),
            // What RabbitMQ answers for a failed check.
            503 => false,
            _ => {
                return Err(CtlError::Api {
                    method: "GET",
                    path,
                    status: r.status,
                    reason: r.reason(),
                })
            }
        };
        let reason = if ok {
            String::new()
        } else {
            failure_text(&body)
        };
        if !ok {
            failed.push(format!("{name}: {reason}"));
        }
        rows.push(
            json!({"check": name, "status": if ok { "ok" } else { "failed" }, "reason": reason}),
        );
    }
    let columns = ctx.columns_or(&["check", "status", "reason"]);
    let out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut w = ListWriter::new(out, ctx.format, columns, false).map_err(write_error)?;
    for r in &rows {
        w.push(r).map_err(write_error)?;
    }
    w.finish().map_err(write_error)?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CtlError::Unhealthy(format!(
            "health check failed: {}",
            failed.join("; ")
        )))
    }
}

/// A failed check's reason with what RabbitMQ adds to it (the alarms, the missing port).
fn failure_text(body: &Value) -> String {
    let mut s = body
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("failed")
        .to_string();
    let resources: Vec<&str> = body
        .get("alarms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("resource").and_then(Value::as_str))
        .collect();
    if !resources.is_empty() {
        s.push_str(&format!(" ({})", resources.join(", ")));
    }
    if let Some(m) = body.get("missing") {
        s.push_str(&format!(" (missing {})", super::output::cell_text(Some(m))));
    }
    s
}

/// on / off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Turn it on.
    On,
    /// Turn it off.
    Off,
}

/// `trace` arguments.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// on or off.
    #[arg(value_enum)]
    state: OnOff,
}

/// Turns firehose tracing of the vhost on or off (RabbitMQ's `PUT /api/vhosts/{vhost}`
/// with `tracing`), then reads the vhost back to check that the broker did it.
pub(crate) fn trace(ctx: &Ctx, a: &TraceArgs) -> CtlResult<()> {
    let v = ctx.vhost();
    let on = a.state == OnOff::On;
    let path = api_path(&["vhosts", v]);
    // PUT creates a missing vhost: look first, so a typo is a 404, not a new vhost.
    let current = ctx.client.get_json(&path)?;
    let mut body = json!({ "tracing": on });
    // Keep what a bare PUT could reset on RabbitMQ.
    if let Some(d) = current.get("description").and_then(Value::as_str) {
        if !d.is_empty() {
            body["description"] = json!(d);
        }
    }
    if let Some(t) = current.get("tags").and_then(Value::as_array) {
        let tags: Vec<&str> = t.iter().filter_map(Value::as_str).collect();
        if !tags.is_empty() {
            body["tags"] = json!(tags.join(","));
        }
    }
    ctx.client.send_json(Method::Put, &path, &body)?;
    let after = ctx.client.get_json(&path)?;
    if after.get("tracing").and_then(Value::as_bool) != Some(on) {
        return Err(CtlError::Failed(format!(
            "the broker accepted the change but vhost {v} reports tracing = {}: it may not support firehose tracing",
            after.get("tracing").map_or("nothing".into(), Value::to_string)
        )));
    }
    match ctx.format {
        Format::Json => {
            ctx.print_object(&json!({"vhost": v, "tracing": on}), &["vhost", "tracing"])
        }
        _ => ctx.done(&format!(
            "tracing {} for vhost {v}",
            if on { "on" } else { "off" }
        )),
    }
}
