//! `ferrymq ctl` as a user runs it: the real binary against a broker on free ports, its
//! effects checked with lapin and with plain HTTP requests to the API, its output parsed in
//! every format, its exit codes checked for each kind of failure.

mod common;

use common::*;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

/// Exit codes documented in docs/ctl.md.
const EXIT_USAGE: i32 = 2;
const EXIT_REFUSED: i32 = 3;
const EXIT_NOT_AUTHORISED: i32 = 4;
const EXIT_NOT_FOUND: i32 = 5;
const EXIT_UNREACHABLE: i32 = 6;
const EXIT_UNHEALTHY: i32 = 7;

/// What one `ferrymq ctl` run gave.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    /// Asserts success and returns the output.
    fn ok(self) -> Out {
        assert_eq!(self.code, 0, "ctl failed: {}", self.stderr);
        self
    }

    /// Stdout as JSON.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// Stdout as TSV: the header and the rows, split on tabs.
    fn tsv(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let mut lines = self.stdout.lines();
        let split = |l: &str| l.split('\t').map(String::from).collect::<Vec<_>>();
        let header = split(lines.next().expect("a header line"));
        let rows: Vec<Vec<String>> = lines.map(split).collect();
        for r in &rows {
            assert_eq!(
                r.len(),
                header.len(),
                "row {r:?} has as many cells as the header"
            );
        }
        (header, rows)
    }
}

/// Runs the binary against a broker's API.
struct Ctl {
    uri: String,
}

impl Ctl {
    fn new(b: &TestBroker) -> Ctl {
        let addr = b
            .running
            .as_ref()
            .and_then(|r| r.management_addr)
            .expect("management listener on");
        Ctl {
            uri: format!("http://guest:guest@{addr}"),
        }
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, None, &[])
    }

    fn run_with(&self, args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Out {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrymq"));
        cmd.arg("ctl")
            .env_remove("FERRYMQ_CTL_URI")
            .env_remove("FERRYMQ_CTL_USER")
            .env_remove("FERRYMQ_CTL_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !env.iter().any(|(k, _)| *k == "FERRYMQ_CTL_URI") {
            cmd.args(["--uri", &self.uri]);
        }
        cmd.args(args).envs(env.iter().copied());
        let mut child = cmd.spawn().expect("ferrymq ctl starts");
        let mut input = child.stdin.take().expect("stdin piped");
        input
            .write_all(stdin.unwrap_or_default())
            .expect("stdin written");
        drop(input);
        let out = child.wait_with_output().expect("ferrymq ctl ends");
        Out {
            code: out.status.code().expect("exited, not killed"),
            stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
            stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
        }
    }
}

/// GET on the API with a plain HTTP client (not ctl's code): (status, body).
fn api(b: &TestBroker, path: &str) -> (u16, Value) {
    let addr = b.running.as_ref().and_then(|r| r.management_addr).unwrap();
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .new_agent();
    let mut r = agent
        .get(format!("http://{addr}{path}"))
        .header("authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
        .call()
        .expect("API answers");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Names (`field`) of the objects in a JSON list.
fn names(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .expect("a JSON list")
        .iter()
        .map(|o| o[field].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn connect_to(
    b: &TestBroker,
    user: &str,
    password: &str,
    vhost: &str,
) -> lapin::Result<Connection> {
    let uri = format!(
        "amqp://{user}:{password}@{}/{}",
        b.addr,
        urlencoding_path(vhost)
    );
    Connection::connect(&uri, ConnectionProperties::default()).await
}

fn urlencoding_path(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (c as char).to_string(),
            _ => format!("%{c:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declares_lists_and_deletes_every_object_type() {
    let b = start().await;
    let ctl = Ctl::new(&b);
    let v = ["--vhost", "shop"];
    let with_v = |args: &[&'static str]| -> Vec<&'static str> {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--vhost", "shop"]);
        a
    };

    ctl.run(&["declare", "vhost", "shop"]).ok();
    ctl.run(&with_v(&[
        "declare",
        "queue",
        "orders",
        "--arguments",
        r#"{"x-max-length": 10}"#,
    ]))
    .ok();
    ctl.run(&with_v(&[
        "declare", "exchange", "events", "--type", "topic",
    ]))
    .ok();
    ctl.run(&with_v(&[
        "declare",
        "binding",
        "--source",
        "events",
        "--destination",
        "orders",
        "--routing-key",
        "order.*",
    ]))
    .ok();
    ctl.run(&[
        "declare",
        "user",
        "app",
        "--user-password",
        "s3cret",
        "--tags",
        "management,policymaker",
    ])
    .ok();
    ctl.run(&with_v(&[
        "declare",
        "permissions",
        "app",
        "--configure",
        "^app\\.",
    ]))
    .ok();
    ctl.run(&with_v(&[
        "declare",
        "topic-permissions",
        "app",
        "--exchange",
        "events",
        "--write",
        "^order\\.",
    ]))
    .ok();
    ctl.run(&with_v(&[
        "declare",
        "policy",
        "cap",
        "--pattern",
        "^orders$",
        "--definition",
        r#"{"max-length": 5}"#,
        "--apply-to",
        "queues",
        "--priority",
        "3",
    ]))
    .ok();
    ctl.run(&with_v(&[
        "declare",
        "vhost-limit",
        "max-queues",
        "--value",
        "50",
    ]))
    .ok();
    ctl.run(&[
        "declare",
        "user-limit",
        "app",
        "max-connections",
        "--value",
        "4",
    ])
    .ok();

    // What a client sees: app logs in to shop, the binding routes, the permissions hold.
    let conn = connect_to(&b, "app", "s3cret", "shop")
        .await
        .expect("app logs in to shop");
    let ch = conn.create_channel().await.unwrap();
    publish(&ch, "events", "order.created", b"first").await;
    let got = get(&ch, "orders")
        .await
        .expect("the binding routed the message");
    assert_eq!(got.delivery.data, b"first");
    got.delivery.ack(Default::default()).await.unwrap();
    let refused = ch
        .queue_declare(
            "not-app",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        code(&refused),
        Some(403),
        "configure permission ^app\\. applies"
    );
    conn.close(200, "bye").await.ok();

    // What the API holds.
    let (_, p) = api(&b, "/api/policies/shop/cap");
    assert_eq!(p["definition"], json!({"max-length": 5}));
    assert_eq!(p["priority"], 3);
    assert_eq!(p["apply-to"], "queues");
    let (_, l) = api(&b, "/api/vhost-limits/shop");
    assert_eq!(l[0]["value"]["max-queues"], 50);
    let (_, l) = api(&b, "/api/user-limits/app");
    assert_eq!(l[0]["value"]["max-connections"], 4);
    let (_, t) = api(&b, "/api/topic-permissions/shop/app");
    assert_eq!(t[0]["write"], "^order\\.");
    let (_, u) = api(&b, "/api/users/app");
    assert_eq!(u["tags"], json!(["management", "policymaker"]));

    // Every kind lists what was declared, in JSON, TSV and table form.
    let list = |kind: &str, fmt: &str, scoped: bool| {
        let mut a = vec!["list", kind, "--format", fmt];
        if scoped {
            a.extend_from_slice(&v);
        }
        ctl.run(&a).ok()
    };
    for (kind, field, want, scoped) in [
        ("queues", "name", "orders", true),
        ("exchanges", "name", "events", true),
        ("bindings", "source", "events", true),
        ("users", "name", "app", false),
        ("vhosts", "name", "shop", false),
        ("permissions", "user", "app", true),
        ("topic-permissions", "user", "app", true),
        ("policies", "name", "cap", true),
        ("vhost-limits", "vhost", "shop", false),
        ("user-limits", "user", "app", false),
    ] {
        let j = list(kind, "json", scoped).json();
        assert!(names(&j, field).contains(&want.to_string()), "{kind}: {j}");
        let (header, rows) = list(kind, "tsv", scoped).tsv();
        let col = header
            .iter()
            .position(|h| h == field)
            .unwrap_or_else(|| panic!("{kind} has {field}: {header:?}"));
        assert!(rows.iter().any(|r| r[col] == want), "{kind} tsv: {rows:?}");
        let table = list(kind, "table", scoped).stdout;
        assert!(
            table.lines().next().unwrap().contains(field),
            "{kind} table header: {table}"
        );
        assert!(
            table
                .lines()
                .skip(1)
                .any(|l| l.split_whitespace().any(|w| w == want)),
            "{kind}: {table}"
        );
    }
    // Bindings have no name: --name matches their source, here on each page.
    let only = ctl
        .run(&[
            "list",
            "bindings",
            "--vhost",
            "shop",
            "--name",
            "^events$",
            "--page-size",
            "1",
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(names(&only, "source"), ["events"], "{only}");
    assert_eq!(only[0]["routing_key"], "order.*");
    // Default columns of a queue list; unscoped lists add the vhost column.
    let (header, rows) = ctl.run(&["list", "queues", "--format", "tsv"]).ok().tsv();
    assert_eq!(
        header,
        ["vhost", "name", "type", "durable", "messages", "consumers"]
    );
    assert_eq!(rows, [["shop", "orders", "classic", "true", "0", "0"]]);
    // --columns picks dotted paths, in every format.
    let j = ctl
        .run(&[
            "list",
            "queues",
            "--vhost",
            "shop",
            "--columns",
            "name,arguments.x-max-length",
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(j, json!([{"name": "orders", "arguments.x-max-length": 10}]));

    // Delete them all again; each is gone for clients and the API.
    ctl.run(&with_v(&[
        "delete",
        "binding",
        "--source",
        "events",
        "--destination",
        "orders",
        "--routing-key",
        "order.*",
    ]))
    .ok();
    let (_, bs) = api(&b, "/api/bindings/shop/e/events/q/orders");
    assert_eq!(bs, json!([]));
    for args in [
        &["delete", "policy", "cap"][..],
        &["delete", "vhost-limit", "max-queues"],
        &["delete", "topic-permissions", "app"],
        &["delete", "permissions", "app"],
        &["delete", "queue", "orders"],
        &["delete", "exchange", "events"],
    ] {
        ctl.run(&with_v(args)).ok();
    }
    ctl.run(&["delete", "user-limit", "app", "max-connections"])
        .ok();
    assert_eq!(api(&b, "/api/policies/shop/cap").0, 404);
    assert_eq!(api(&b, "/api/permissions/shop/app").0, 404);
    assert_eq!(api(&b, "/api/topic-permissions/shop/app").0, 404);
    assert_eq!(api(&b, "/api/vhost-limits/shop").1, json!([]));
    assert_eq!(api(&b, "/api/user-limits/app").1, json!([]));
    let guest = connect_to(&b, "guest", "guest", "shop").await.unwrap();
    let ch = guest.create_channel().await.unwrap();
    assert_eq!(
        code(&passive_queue(&ch, "orders").await.unwrap_err()),
        Some(404)
    );
    ctl.run(&["delete", "user", "app"]).ok();
    assert!(
        connect_to(&b, "app", "s3cret", "shop").await.is_err(),
        "app is gone"
    );
    ctl.run(&["delete", "vhost", "shop"]).ok();
    assert_eq!(api(&b, "/api/vhosts/shop").0, 404);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_ctl_is_consumed_by_lapin() {
    let b = start().await;
    let ctl = Ctl::new(&b);
    let (_c, ch) = channel(&b).await;
    queue(&ch, "inbox").await;
    let out = ctl
        .run(&[
            "publish",
            "--routing-key",
            "inbox",
            "--payload",
            "hello",
            "--content-type",
            "text/plain",
            "--persistent",
            "--header",
            "source=ctl",
            "--message-id",
            "m-1",
            "--format",
            "json",
        ])
        .ok();
    assert_eq!(out.json(), json!({"routed": true}));
    let mut consumer = consume(&ch, "inbox", "c").await;
    let d = next(&mut consumer).await;
    assert_eq!(d.data, b"hello");
    assert_eq!(
        d.properties.content_type().as_ref().map(|s| s.as_str()),
        Some("text/plain")
    );
    assert_eq!(*d.properties.delivery_mode(), Some(2));
    assert_eq!(
        d.properties.message_id().as_ref().map(|s| s.as_str()),
        Some("m-1")
    );
    let headers = d.properties.headers().clone().expect("headers");
    assert_eq!(
        headers.inner().get("source"),
        Some(&AMQPValue::LongString("ctl".into()))
    );
    d.ack(Default::default()).await.unwrap();

    // A body from stdin that is not UTF-8 arrives byte for byte.
    let body: Vec<u8> = (0u8..=255).collect();
    ctl.run_with(&["publish", "--routing-key", "inbox"], Some(&body), &[])
        .ok();
    let d = next(&mut consumer).await;
    assert_eq!(d.data, body);

    // Nothing bound: published but not routed, said plainly.
    let out = ctl
        .run(&[
            "publish",
            "--exchange",
            "amq.direct",
            "--routing-key",
            "nowhere",
            "--payload",
            "x",
        ])
        .ok();
    assert!(out.stdout.contains("NOT routed"), "{}", out.stdout);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_leaves_messages_get_takes_them_purge_empties() {
    let b = start().await;
    let ctl = Ctl::new(&b);
    let (_c, ch) = channel(&b).await;
    queue(&ch, "work").await;
    for body in [&b"one"[..], b"two", b"\xff\xfe"] {
        publish(&ch, "", "work", body).await;
    }

    let peeked = ctl
        .run(&["peek", "work", "--count", "3", "--format", "json"])
        .ok()
        .json();
    let payloads: Vec<&str> = peeked
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["one", "two", "\u{fffd}\u{fffd}"]);
    assert_eq!(
        passive_queue(&ch, "work").await.unwrap().message_count(),
        3,
        "peek left them"
    );

    // Bodies exactly, as base64.
    let exact = ctl
        .run(&[
            "peek", "work", "--count", "3", "--body", "base64", "--format", "json",
        ])
        .ok()
        .json();
    assert_eq!(exact[2]["payload"], "//4=");
    assert_eq!(exact[2]["payload_encoding"], "base64");

    let (header, rows) = ctl
        .run(&["get", "work", "--count", "2", "--format", "tsv"])
        .ok()
        .tsv();
    let p = header.iter().position(|h| h == "payload").unwrap();
    assert_eq!(
        rows.iter().map(|r| r[p].as_str()).collect::<Vec<_>>(),
        ["one", "two"]
    );
    let r = header.iter().position(|h| h == "redelivered").unwrap();
    assert_eq!(
        rows[0][r], "true",
        "peeked messages come back marked redelivered"
    );
    assert_eq!(
        passive_queue(&ch, "work").await.unwrap().message_count(),
        1,
        "get took two"
    );

    let table = ctl.run(&["peek", "work"]).ok().stdout;
    assert!(table.starts_with("exchange"), "{table}");

    ctl.run(&["purge", "queue", "work"]).ok();
    assert_eq!(passive_queue(&ch, "work").await.unwrap().message_count(), 0);
    assert_eq!(
        ctl.run(&["get", "work", "--format", "json"]).ok().json(),
        json!([])
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_delete_import_round_trip() {
    let b = start().await;
    let ctl = Ctl::new(&b);
    ctl.run(&[
        "declare",
        "queue",
        "keep",
        "--arguments",
        r#"{"x-message-ttl": 60000}"#,
    ])
    .ok();
    ctl.run(&["declare", "exchange", "fan", "--type", "fanout"])
        .ok();
    ctl.run(&[
        "declare",
        "binding",
        "--source",
        "fan",
        "--destination",
        "keep",
    ])
    .ok();
    ctl.run(&[
        "declare",
        "user",
        "ops",
        "--user-password",
        "pw",
        "--tags",
        "monitoring",
    ])
    .ok();
    ctl.run(&[
        "declare",
        "permissions",
        "ops",
        "--configure",
        "",
        "--write",
        "",
    ])
    .ok();
    ctl.run(&[
        "declare",
        "policy",
        "ttl",
        "--pattern",
        "^keep$",
        "--definition",
        r#"{"expires": 900000}"#,
    ])
    .ok();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("defs.json");
    let file_s = file.to_str().unwrap();
    ctl.run(&["export", file_s]).ok();
    let defs: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(names(&defs["queues"], "name").contains(&"keep".to_string()));
    // Without a file the definitions go to stdout.
    let stdout_defs = ctl.run(&["export"]).ok().json();
    assert_eq!(stdout_defs["queues"], defs["queues"]);

    ctl.run(&["delete", "queue", "keep"]).ok();
    ctl.run(&["delete", "exchange", "fan"]).ok();
    ctl.run(&["delete", "user", "ops"]).ok();
    ctl.run(&["delete", "policy", "ttl"]).ok();
    assert_eq!(api(&b, "/api/queues/%2F/keep").0, 404);

    ctl.run(&["import", file_s]).ok();
    let (_, q) = api(&b, "/api/queues/%2F/keep");
    assert_eq!(q["arguments"]["x-message-ttl"], 60000);
    assert_eq!(api(&b, "/api/exchanges/%2F/fan").1["type"], "fanout");
    assert_eq!(
        api(&b, "/api/bindings/%2F/e/fan/q/keep")
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(api(&b, "/api/users/ops").1["tags"], json!(["monitoring"]));
    assert_eq!(
        api(&b, "/api/policies/%2F/ttl").1["definition"]["expires"],
        900000
    );
    let conn = connect_to(&b, "ops", "pw", "/").await;
    assert!(
        conn.is_ok(),
        "the imported user logs in with its password and permissions"
    );
    let (_, p) = api(&b, "/api/permissions/%2F/ops");
    assert_eq!(
        (p["configure"].as_str(), p["read"].as_str()),
        (Some(""), Some(".*"))
    );

    // From stdin, into one vhost.
    ctl.run(&["declare", "vhost", "other"]).ok();
    let one = r#"{"queues": [{"name": "q-in-other", "durable": true, "auto_delete": false, "arguments": {}}]}"#;
    ctl.run_with(&["import", "--vhost", "other"], Some(one.as_bytes()), &[])
        .ok();
    assert_eq!(api(&b, "/api/queues/other/q-in-other").0, 200);
    // A file that is not JSON is refused before anything is sent.
    let bad = ctl.run_with(&["import"], Some(b"{nope"), &[]);
    assert_eq!(bad.code, EXIT_USAGE, "{}", bad.stderr);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_connection_by_name_and_list_clients() {
    let b = start().await;
    let ctl = Ctl::new(&b);
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.unwrap();
    queue(&ch, "jobs").await;
    let _consumer = consume(&ch, "jobs", "worker-1").await;

    let conns = ctl
        .run(&["list", "connections", "--format", "json"])
        .ok()
        .json();
    let list = conns.as_array().unwrap();
    assert_eq!(list.len(), 1, "{conns}");
    let name = list[0]["name"].as_str().unwrap().to_string();
    assert_eq!(list[0]["user"], "guest");
    let chans = ctl
        .run(&["list", "channels", "--format", "json"])
        .ok()
        .json();
    assert_eq!(chans.as_array().unwrap().len(), 1, "{chans}");
    let (header, rows) = ctl
        .run(&["list", "consumers", "--format", "tsv"])
        .ok()
        .tsv();
    let tag = header.iter().position(|h| h == "consumer_tag").unwrap();
    let q = header.iter().position(|h| h == "queue.name").unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0][q].as_str(), rows[0][tag].as_str()),
        ("jobs", "worker-1")
    );

    ctl.run(&["close", "connection", &name, "--reason", "maintenance"])
        .ok();
    eventually(
        || !conn.status().connected(),
        "lapin sees its connection closed",
    )
    .await;
    eventually(
        || api(&b, "/api/connections").1 == json!([]),
        "the broker lists no connection",
    )
    .await;
    let again = ctl.run(&["close", "connection", &name]);
    assert_eq!(again.code, EXIT_NOT_FOUND, "{}", again.stderr);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_filter_and_sort_on_the_server() {
    let b = start().await;
    let ctl = Ctl::new(&b);
    let (_c, ch) = channel(&b).await;
    for i in 0..25 {
        queue(&ch, &format!("q{i:02}")).await;
    }
    for _ in 0..3 {
        publish(&ch, "", "q07", b"x").await;
    }
    // The whole list, fetched 7 at a time: every queue once, in name order.
    let all = ctl
        .run(&["list", "queues", "--page-size", "7", "--format", "json"])
        .ok()
        .json();
    let want: Vec<String> = (0..25).map(|i| format!("q{i:02}")).collect();
    assert_eq!(names(&all, "name"), want);
    // One page.
    let page = ctl
        .run(&[
            "list",
            "queues",
            "--page",
            "2",
            "--page-size",
            "10",
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(names(&page, "name"), want[10..20]);
    // Regex filter and sort by another field, reversed.
    let f = ctl
        .run(&["list", "queues", "--name", "^q1[0-4]$", "--format", "json"])
        .ok()
        .json();
    assert_eq!(names(&f, "name"), want[10..15]);
    let s = ctl
        .run(&[
            "list",
            "queues",
            "--sort",
            "messages",
            "--sort-reverse",
            "--columns",
            "name,messages",
            "--format",
            "tsv",
        ])
        .ok()
        .tsv();
    assert_eq!(s.1[0], ["q07", "3"]);
    // A page past the end is the API's 400.
    let past = ctl.run(&["list", "queues", "--page", "9", "--page-size", "10"]);
    assert_eq!(past.code, EXIT_REFUSED, "{}", past.stderr);
    assert!(past.stderr.contains("Page out of range"), "{}", past.stderr);

    // The overview.
    let st = ctl.run(&["status", "--format", "json"]).ok().json();
    assert_eq!(st["object_totals"]["queues"], 25);
    assert_eq!(st["queue_totals"]["messages"], 3);
    let table = ctl.run(&["status"]).ok().stdout;
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["object_totals.queues", "25"]),
        "{table}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_error_lines() {
    let b = start().await;
    let ctl = Ctl::new(&b);

    // Wrong password: 401 with RabbitMQ's reason.
    let bad = ctl.run(&["--password", "wrong", "list", "queues"]);
    assert_eq!(bad.code, EXIT_NOT_AUTHORISED);
    assert_eq!(bad.stderr.lines().count(), 1, "one line: {}", bad.stderr);
    assert!(
        bad.stderr.contains("401") && bad.stderr.contains("Login failed"),
        "{}",
        bad.stderr
    );
    // The same through the environment.
    let addr = b.running.as_ref().and_then(|r| r.management_addr).unwrap();
    let uri = format!("http://{addr}");
    let env_bad = ctl.run_with(
        &["list", "queues"],
        None,
        &[
            ("FERRYMQ_CTL_URI", &uri),
            ("FERRYMQ_CTL_USER", "guest"),
            ("FERRYMQ_CTL_PASSWORD", "nope"),
        ],
    );
    assert_eq!(env_bad.code, EXIT_NOT_AUTHORISED, "{}", env_bad.stderr);
    let env_ok = ctl.run_with(
        &["list", "vhosts", "--format", "json"],
        None,
        &[("FERRYMQ_CTL_URI", &uri), ("FERRYMQ_CTL_PASSWORD", "guest")],
    );
    assert_eq!(names(&env_ok.ok().json(), "name"), ["/"]);

    // A user without the administrator tag: 401 not_authorised.
    ctl.run(&[
        "declare",
        "user",
        "viewer",
        "--user-password",
        "v",
        "--tags",
        "management",
    ])
    .ok();
    let denied = ctl.run(&[
        "--user",
        "viewer",
        "--password",
        "v",
        "delete",
        "user",
        "guest",
    ]);
    assert_eq!(denied.code, EXIT_NOT_AUTHORISED);
    assert!(
        denied.stderr.contains("Not administrator user"),
        "{}",
        denied.stderr
    );

    // 404.
    let missing = ctl.run(&["delete", "queue", "nope"]);
    assert_eq!(missing.code, EXIT_NOT_FOUND);
    assert!(missing.stderr.contains("404"), "{}", missing.stderr);
    let missing_vhost = ctl.run(&["list", "queues", "--vhost", "nowhere"]);
    assert_eq!(missing_vhost.code, EXIT_NOT_FOUND);

    // Other 4xx: redeclaring with other properties.
    ctl.run(&["declare", "queue", "q"]).ok();
    let clash = ctl.run(&["declare", "queue", "q", "--durable", "false"]);
    assert_eq!(clash.code, EXIT_REFUSED, "{}", clash.stderr);
    assert!(clash.stderr.contains("inequivalent"), "{}", clash.stderr);

    // Nothing listening.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port().to_string();
    drop(free);
    let down = ctl.run(&["--host", "127.0.0.1", "--port", &port, "status"]);
    assert_eq!(down.code, EXIT_UNREACHABLE);
    assert!(down.stderr.contains("cannot reach"), "{}", down.stderr);
    // The AMQP port is not the API.
    let amqp_port = b.addr.port().to_string();
    let wrong = ctl.run(&["--port", &amqp_port, "--timeout", "5", "status"]);
    assert_eq!(wrong.code, EXIT_UNREACHABLE, "{}", wrong.stderr);

    // Usage errors: clap's and ours.
    for args in [
        &["list", "bananas"][..],
        &["declare", "queue"],
        &["declare", "queue", "x", "--arguments", "{not json"],
        &["--uri", "https://h:15671", "status"],
        &["--timeout", "0", "status"],
    ] {
        let u = ctl.run(args);
        assert_eq!(u.code, EXIT_USAGE, "{args:?}: {}", u.stderr);
        assert!(u.stdout.is_empty());
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_under_an_alarm_and_for_a_missing_listener() {
    let b = start().await;
    let ctl = Ctl::new(&b);
    let ok = ctl.run(&["health", "--format", "json"]).ok().json();
    let checks: Vec<&str> = ok
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert!(
        checks.contains(&"alarms") && checks.contains(&"virtual-hosts"),
        "{ok}"
    );
    assert!(
        checks.contains(&format!("port-listener {}", b.addr.port()).as_str()),
        "{ok}"
    );
    assert!(ok.as_array().unwrap().iter().all(|c| c["status"] == "ok"));

    // A real disk alarm: no disk has that much free.
    let running = b.running.as_ref().unwrap();
    running.alarms.set_limits(ferrymq::alarms::AlarmLimits {
        memory_high_watermark: 0.99,
        disk_free_limit: u64::MAX,
    });
    eventually(
        || ctl.run(&["health"]).code == EXIT_UNHEALTHY,
        "health fails under the alarm",
    )
    .await;
    let failing = ctl.run(&["health", "--format", "tsv"]);
    let (header, rows) = failing.tsv();
    let s = header.iter().position(|h| h == "status").unwrap();
    let alarms = rows.iter().find(|r| r[0] == "alarms").unwrap();
    assert_eq!(alarms[s], "failed");
    assert!(
        failing.stderr.contains("alarms") && failing.stderr.contains("disk"),
        "{}",
        failing.stderr
    );

    running.alarms.set_limits(ferrymq::alarms::AlarmLimits {
        memory_high_watermark: 0.99,
        disk_free_limit: 0,
    });
    eventually(
        || ctl.run(&["health"]).code == 0,
        "health passes once the alarm clears",
    )
    .await;

    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port().to_string();
    drop(free);
    let missing = ctl.run(&["health", "--listener-port", &port]);
    assert_eq!(missing.code, EXIT_UNHEALTHY);
    assert!(
        missing.stderr.contains("No active listener"),
        "{}",
        missing.stderr
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_of_a_missing_vhost_is_not_found() {
    let b = start().await;
    let ctl = Ctl::new(&b);
    let out = ctl.run(&["trace", "on", "--vhost", "typo"]);
    assert_eq!(out.code, EXIT_NOT_FOUND, "{}", out.stderr);
    assert_eq!(
        api(&b, "/api/vhosts/typo").0,
        404,
        "trace does not create vhosts"
    );
    b.stop().await;
}

/// `ctl trace on|off` switches the firehose: the vhost reports it and a queue bound to
/// `amq.rabbitmq.trace` gets the publish copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_on_and_off_set_the_vhosts_tracing_flag() {
    let b = start().await;
    let ctl = Ctl::new(&b);
    let (_c, ch) = channel(&b).await;
    queue(&ch, "traced").await;
    queue(&ch, "firehose").await;
    ch.queue_bind(
        "firehose",
        "amq.rabbitmq.trace",
        "#",
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    ctl.run(&["trace", "on"]).ok();
    assert_eq!(api(&b, "/api/vhosts/%2F").1["tracing"], true);
    ch.basic_publish(
        "",
        "traced",
        BasicPublishOptions::default(),
        b"seen",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut fh = consume(&ch, "firehose", "fh").await;
    let d = next(&mut fh).await;
    assert_eq!(d.routing_key.as_str(), "publish.");
    assert_eq!(d.data, b"seen");

    ctl.run(&["trace", "off", "--format", "json"]).ok();
    assert_eq!(api(&b, "/api/vhosts/%2F").1["tracing"], false);
    b.stop().await;
}

/// A loopback listener that accepts connections and hands each to `serve` on a thread.
fn fake_api(serve: fn(std::net::TcpStream)) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve(s));
        }
    });
    port
}

#[test]
fn a_broker_that_never_answers_is_unreachable_after_the_timeout() {
    let port = fake_api(|s| {
        // Hold the connection open without a byte of answer until the client gives up.
        let mut buf = [0u8; 1024];
        let mut s = s;
        while matches!(std::io::Read::read(&mut s, &mut buf), Ok(n) if n > 0) {}
    });
    let ctl = Ctl {
        uri: format!("http://guest:guest@127.0.0.1:{port}"),
    };
    let out = ctl.run(&["--timeout", "1", "list", "queues"]);
    assert_eq!(out.code, EXIT_UNREACHABLE, "{}", out.stderr);
    assert!(
        out.stderr.contains("no answer within 1 s"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_answer_over_64_mib_is_refused_not_buffered() {
    let port = fake_api(|mut s| {
        let mut buf = [0u8; 4096];
        let _ = std::io::Read::read(&mut s, &mut buf);
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000000000\r\n\r\n[";
        if s.write_all(head.as_bytes()).is_err() {
            return;
        }
        // Stream until the client hangs up (it stops at 64 MiB).
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..1000 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let ctl = Ctl {
        uri: format!("http://guest:guest@127.0.0.1:{port}"),
    };
    let out = ctl.run(&["list", "users"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("larger than 67108864 bytes"),
        "{}",
        out.stderr
    );
}

/// A server that claims endless pages but answers one short page: ctl takes the short page
/// as the last one instead of walking `page_count` pages.
#[test]
fn a_short_page_ends_the_walk_whatever_page_count_claims() {
    static REQUESTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let port = fake_api(|mut s| {
        let mut buf = [0u8; 4096];
        let _ = std::io::Read::read(&mut s, &mut buf);
        REQUESTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let body = r#"{"items":[{"name":"q1","messages":0}],"page_count":4294967295,"page":1,"page_size":500,"total_count":1,"item_count":1,"filtered_count":1}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(body.as_bytes());
    });
    let ctl = Ctl {
        uri: format!("http://guest:guest@127.0.0.1:{port}"),
    };
    let out = ctl.run(&["--timeout", "5", "--format", "tsv", "list", "queues"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("q1"), "{}", out.stdout);
    assert_eq!(REQUESTS.load(std::sync::atomic::Ordering::SeqCst), 1);
}
