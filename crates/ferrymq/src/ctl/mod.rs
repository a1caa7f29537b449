//! `ferrymq ctl`: administration through the management HTTP API only, so the same command
//! works against FerryMQ and RabbitMQ. Verbs follow rabbitmqadmin's (`list`, `declare`,
//! `delete`, `purge`, `publish`, `get`, `close`, `export`, `import`); docs/ctl.md has them
//! all with examples, the formats and the exit codes.

pub mod client;
mod definitions;
pub mod error;
mod health;
mod list;
mod messages;
mod objects;
pub mod output;

use client::{Client, Endpoint, EndpointArgs};
use error::{CtlError, CtlResult, EXIT_OK};
use output::Format;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// `ferrymq ctl`'s command line.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    verb: Verb,
}

/// Options every verb takes.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Global options")]
struct GlobalArgs {
    /// The API as http://user:pass@host:port[/prefix] [default: http://guest:guest@localhost:15672].
    #[arg(long, global = true, env = "FERRYMQ_CTL_URI", value_name = "URI")]
    uri: Option<String>,
    /// Broker host (overrides --uri's) [default: localhost].
    #[arg(long, global = true, value_name = "HOST")]
    host: Option<String>,
    /// Management API port (overrides --uri's) [default: 15672].
    #[arg(long, global = true, value_name = "PORT")]
    port: Option<u16>,
    /// Login (overrides --uri's) [default: guest].
    #[arg(long, global = true, env = "FERRYMQ_CTL_USER", value_name = "USER")]
    user: Option<String>,
    /// Password (overrides --uri's) [default: guest].
    #[arg(
        long,
        global = true,
        env = "FERRYMQ_CTL_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    password: Option<String>,
    /// Virtual host to work in [default: /]; lists show every vhost without it.
    #[arg(long, global = true, value_name = "VHOST")]
    vhost: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Columns to show, as dotted paths into the API's objects (e.g. name,message_stats.publish).
    #[arg(long, global = true, value_delimiter = ',', value_name = "COLS")]
    columns: Vec<String>,
    /// Seconds each HTTP request may take, connecting included.
    #[arg(long, global = true, default_value_t = 60.0, value_name = "SECONDS")]
    timeout: f64,
}

/// The verbs.
#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// List objects (server-side paging, sorting and filtering where the API has them).
    List(list::ListArgs),
    /// Create or update an object.
    Declare {
        #[command(subcommand)]
        what: objects::Declare,
    },
    /// Delete an object.
    Delete {
        #[command(subcommand)]
        what: objects::Delete,
    },
    /// Remove every ready message from a queue.
    Purge {
        #[command(subcommand)]
        what: objects::Purge,
    },
    /// Close a client connection (320 CONNECTION_FORCED).
    Close {
        #[command(subcommand)]
        what: objects::Close,
    },
    /// Publish a message through the API.
    Publish(messages::PublishArgs),
    /// Take messages from a queue (they are removed: ackmode ack_requeue_false).
    Get(messages::GetArgs),
    /// Look at messages without removing them (ackmode ack_requeue_true; they come back
    /// marked redelivered).
    Peek(messages::GetArgs),
    /// Write the definitions (users, vhosts, permissions, policies, queues, exchanges,
    /// bindings) to a file or stdout; only --vhost's with --vhost.
    Export(definitions::ExportArgs),
    /// Load definitions from a file or stdin; into --vhost only with --vhost.
    Import(definitions::ImportArgs),
    /// The broker's overview: versions, node, totals, listeners.
    Status,
    /// Health checks (alarms, listeners, virtual hosts); exit code 7 when one fails.
    Health(health::HealthArgs),
    /// Turn firehose tracing of --vhost (default /) on or off.
    Trace(health::TraceArgs),
}

/// What every command works with.
pub(crate) struct Ctx {
    pub client: Client,
    pub vhost: Option<String>,
    pub format: Format,
    pub columns: Vec<String>,
}

impl Ctx {
    /// The vhost to act in: --vhost, else `/`.
    pub fn vhost(&self) -> &str {
        self.vhost.as_deref().unwrap_or("/")
    }

    /// --columns if given, else `default`.
    pub fn columns_or(&self, default: &[&str]) -> Vec<String> {
        if self.columns.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            self.columns.clone()
        }
    }

    /// Prints one object with --columns, else `default` columns (JSON: the whole object
    /// unless --columns).
    pub fn print_object(&self, item: &Value, default: &[&str]) -> CtlResult<()> {
        let cols = self.columns_or(default);
        let whole = self.columns.is_empty();
        let mut out = std::io::stdout().lock();
        output::write_object(&mut out, self.format, &cols, item, whole).map_err(write_error)
    }

    /// Prints a one-line outcome of a change (`queue declared`), or `{"result": ...}` in JSON.
    pub fn done(&self, what: &str) -> CtlResult<()> {
        let mut out = std::io::stdout().lock();
        let r = match self.format {
            Format::Json => writeln!(out, "{}", serde_json::json!({ "result": what })),
            _ => writeln!(out, "{what}"),
        };
        r.and_then(|_| out.flush()).map_err(write_error)
    }
}

/// A failed write to stdout; a closed pipe (`| head`) is not worth a message.
pub(crate) fn write_error(e: std::io::Error) -> CtlError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CtlError::Failed(String::new())
    } else {
        CtlError::Failed(format!("cannot write the output: {e}"))
    }
}

/// Parses a JSON object argument (`--arguments '{"x-max-length": 10}'`).
pub(crate) fn json_object(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("expected a JSON object such as {\"key\": 1}".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// Reads at most `max` bytes from a file (`-` or none: stdin); more is an error.
pub(crate) fn read_input(path: Option<&PathBuf>, max: u64, what: &str) -> CtlResult<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    let name = match path {
        Some(p) if p.as_os_str() != "-" => p.display().to_string(),
        _ => "stdin".to_string(),
    };
    let read = match path {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::File::open(p).and_then(|f| f.take(max + 1).read_to_end(&mut buf))
        }
        _ => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("reading {what} from stdin (end with Ctrl-D)");
            }
            std::io::stdin().lock().take(max + 1).read_to_end(&mut buf)
        }
    };
    read.map_err(|e| CtlError::Failed(format!("cannot read {what} from {name}: {e}")))?;
    if buf.len() as u64 > max {
        return Err(CtlError::Usage(format!(
            "{what} from {name} is larger than {max} bytes"
        )));
    }
    Ok(buf)
}

/// Runs a ctl command line; returns the process exit code (errors are printed on stderr).
pub fn run(args: CtlArgs) -> u8 {
    match execute(args) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let text = printable(&e.to_string());
            if !text.is_empty() {
                eprintln!("ferrymq ctl: {text}");
            }
            e.exit_code()
        }
    }
}

/// `s` with control characters escaped: an error carries text of the server's (a reason, a
/// queue name an AMQP client chose), which must not drive the operator's terminal.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c.is_control() {
            true => c.escape_default().collect::<Vec<_>>(),
            false => vec![c],
        })
        .collect()
}

fn execute(args: CtlArgs) -> CtlResult<()> {
    let g = args.global;
    if !(g.timeout.is_finite() && g.timeout > 0.0 && g.timeout <= 86_400.0) {
        return Err(CtlError::Usage(
            "--timeout must be a number of seconds between 0 and 86400".into(),
        ));
    }
    let endpoint = Endpoint::resolve(&EndpointArgs {
        uri: g.uri.as_deref(),
        host: g.host.as_deref(),
        port: g.port,
        user: g.user.as_deref(),
        password: g.password.as_deref(),
    })?;
    let columns: Vec<String> = g
        .columns
        .into_iter()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    let ctx = Ctx {
        client: Client::new(&endpoint, Duration::from_secs_f64(g.timeout)),
        vhost: g.vhost,
        format: g.format,
        columns,
    };
    match args.verb {
        Verb::List(a) => list::list(&ctx, &a),
        Verb::Declare { what } => objects::declare(&ctx, what),
        Verb::Delete { what } => objects::delete(&ctx, what),
        Verb::Purge { what } => objects::purge(&ctx, what),
        Verb::Close { what } => objects::close(&ctx, what),
        Verb::Publish(a) => messages::publish(&ctx, a),
        Verb::Get(a) => messages::get(&ctx, &a, false),
        Verb::Peek(a) => messages::get(&ctx, &a, true),
        Verb::Export(a) => definitions::export(&ctx, &a),
        Verb::Import(a) => definitions::import(&ctx, &a),
        Verb::Status => health::status(&ctx),
        Verb::Health(a) => health::health(&ctx, &a),
        Verb::Trace(a) => health::trace(&ctx, &a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        ctl: CtlArgs,
    }

    fn parse(args: &[&str]) -> CtlArgs {
        let mut v = vec!["ctl"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parses").ctl
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_verbs_user_is_not_the_login() {
        // The global --user logs in; the user a verb acts on is positional.
        let a = parse(&[
            "declare",
            "permissions",
            "app",
            "--user",
            "admin",
            "--vhost",
            "v",
        ]);
        assert_eq!(a.global.user.as_deref(), Some("admin"));
        assert_eq!(a.global.vhost.as_deref(), Some("v"));
        match a.verb {
            Verb::Declare {
                what: objects::Declare::Permissions { who, .. },
            } => assert_eq!(who, "app"),
            other => panic!("parsed as {other:?}"),
        }
        let a = parse(&[
            "declare",
            "user",
            "app",
            "--user-password",
            "x",
            "--password",
            "y",
        ]);
        assert_eq!(a.global.password.as_deref(), Some("y"));
    }

    #[test]
    fn errors_cannot_carry_terminal_escapes() {
        let reason = "no queue '\u{1b}]0;pwned\u{7}\u{1b}[2J' in vhost '/'\nfake";
        let p = printable(reason);
        assert!(!p.chars().any(char::is_control), "{p:?}");
        assert_eq!(
            p,
            "no queue '\\u{1b}]0;pwned\\u{7}\\u{1b}[2J' in vhost '/'\\nfake"
        );
        assert_eq!(
            printable("GET /api/x: 404 Not Found"),
            "GET /api/x: 404 Not Found"
        );
    }

    #[test]
    fn json_arguments_must_be_objects() {
        assert!(json_object(r#"{"x-max-length": 1}"#).is_ok());
        assert!(json_object("[1]").is_err());
        assert!(json_object("{nope").is_err());
    }
}
