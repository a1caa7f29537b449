//! The HTTP side of `ferrymq ctl`: where the API is, who logs in, and one blocking request
//! at a time with bounded answers and deadlines (ureq, ADR 0016).

use super::error::{CtlError, CtlResult};
use base64::Engine;
use serde_json::Value;
use std::time::Duration;

/// Largest answer read from the API; a longer one is an error rather than a huge buffer.
/// Big enough for a definitions export of 100,000 queues or a 500-item page of anything.
pub const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// The management API's default port (RabbitMQ's).
pub const DEFAULT_PORT: u16 = 15672;

/// Where the API is and whom to log in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http://host:port` plus any path prefix, without a trailing `/`.
    pub base: String,
    /// Login.
    pub user: String,
    /// Password.
    pub password: String,
}

/// What the command line says about the endpoint, before defaults.
#[derive(Debug, Default)]
pub struct EndpointArgs<'a> {
    /// `--uri`: `http://user:pass@host:port[/prefix]`.
    pub uri: Option<&'a str>,
    /// `--host`, overriding the URI's.
    pub host: Option<&'a str>,
    /// `--port`, overriding the URI's.
    pub port: Option<u16>,
    /// `--user`, overriding the URI's.
    pub user: Option<&'a str>,
    /// `--password`, overriding the URI's.
    pub password: Option<&'a str>,
}

impl Endpoint {
    /// Combines `--uri` with `--host`/`--port`/`--user`/`--password` (which win) and the
    /// defaults (localhost, 15672, guest/guest).
    pub fn resolve(a: &EndpointArgs) -> CtlResult<Endpoint> {
        let (mut host, mut port, mut user, mut password, mut prefix) = (
            "localhost".to_string(),
            DEFAULT_PORT,
            "guest".to_string(),
            "guest".to_string(),
            String::new(),
        );
        if let Some(uri) = a.uri {
            let u = parse_uri(uri)?;
            host = u.host;
            port = u.port.unwrap_or(DEFAULT_PORT);
            prefix = u.prefix;
            if let Some(v) = u.user {
                user = v;
            }
            if let Some(v) = u.password {
                password = v;
            }
        }
        if let Some(h) = a.host {
            host = h.to_string();
        }
        if let Some(p) = a.port {
            port = p;
        }
        if let Some(v) = a.user {
            user = v.to_string();
        }
        if let Some(v) = a.password {
            password = v.to_string();
        }
        if host.is_empty() {
            return Err(CtlError::Usage("the broker's host name is empty".into()));
        }
        // An IPv6 literal needs brackets in a URL.
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Endpoint {
            base: format!("http://{host}:{port}{prefix}"),
            user,
            password,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
struct ParsedUri {
    host: String,
    port: Option<u16>,
    user: Option<String>,
    password: Option<String>,
    prefix: String,
}

fn decode(s: &str, what: &str) -> CtlResult<String> {
    urlencoding::decode(s).map(|c| c.into_owned()).map_err(|_| {
        CtlError::Usage(format!(
            "the --uri {what} is not valid percent-encoded UTF-8"
        ))
    })
}

fn parse_uri(uri: &str) -> CtlResult<ParsedUri> {
    let lower = uri.to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &uri["http://".len()..]
    } else if lower.starts_with("https://") {
        return Err(CtlError::Usage(
            "https is not supported: the management listener speaks plain HTTP (put a TLS proxy's plain side in --uri)".into(),
        ));
    } else {
        return Err(CtlError::Usage(format!(
            "--uri must look like http://user:pass@host:15672, not {uri:?}"
        )));
    };
    let (authority, prefix) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    // Only a path prefix (a management listener behind a path) is kept.
    let prefix = prefix
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string();
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((n, p)) => (Some(decode(n, "user")?), Some(decode(p, "password")?)),
            None => (Some(decode(u, "user")?), None),
        },
    };
    let bad_port = |p: &str| CtlError::Usage(format!("--uri has a bad port {p:?}"));
    let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| CtlError::Usage("--uri has an unclosed [ in its host".into()))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad_port(p))?),
            None if after.is_empty() => None,
            None => return Err(bad_port(after)),
        };
        (format!("[{h}]"), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse().map_err(|_| bad_port(p))?)),
            None => (hostport.to_string(), None),
        }
    };
    Ok(ParsedUri {
        host,
        port,
        user,
        password,
        prefix,
    })
}

/// `/api/` followed by `segments`, each percent-encoded (so the vhost `/` is `%2F`).
pub fn api_path(segments: &[&str]) -> String {
    let mut p = String::from("/api");
    for s in segments {
        p.push('/');
        p.push_str(&urlencoding::encode(s));
    }
    p
}

/// `path?k=v&...` with the values percent-encoded; pairs with an empty value are left out.
pub fn with_query(path: &str, pairs: &[(&str, String)]) -> String {
    let mut out = path.to_string();
    let mut sep = '?';
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        out.push(sep);
        out.push_str(k);
        out.push('=');
        out.push_str(&urlencoding::encode(v));
        sep = '&';
    }
    out
}

/// An HTTP method the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// PUT.
    Put,
    /// POST.
    Post,
    /// DELETE.
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// An answer of the API, whatever its status.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body, at most [`MAX_RESPONSE`] bytes.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (an empty body is `null`).
    pub fn json(&self) -> CtlResult<Value> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| CtlError::Failed(format!("the API's answer is not JSON: {e}")))
    }

    /// RabbitMQ's `reason` (else `error`) of an error body, else the status's own text.
    pub fn reason(&self) -> String {
        let v = serde_json::from_slice::<Value>(&self.body).unwrap_or(Value::Null);
        for key in ["reason", "error"] {
            match v.get(key) {
                Some(Value::String(s)) if !s.is_empty() => return s.clone(),
                Some(Value::Null) | None => {}
                Some(Value::String(_)) => {}
                Some(other) => return other.to_string(),
            }
        }
        status_text(self.status).to_string()
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "HTTP error",
    }
}

/// A logged-in API client. Each request runs under one deadline (connect, send, answer).
pub struct Client {
    agent: ureq::Agent,
    base: String,
    authorization: String,
    timeout: Duration,
}

impl Client {
    /// A client for `ep` whose requests each end after `timeout`.
    pub fn new(ep: &Endpoint, timeout: Duration) -> Client {
        let agent = ureq::Agent::config_builder()
            // Error statuses carry RabbitMQ's reason in their body; read them like any answer.
            .http_status_as_error(false)
            // The management API does not redirect; a redirect is someone else answering.
            .max_redirects(0)
            .max_redirects_will_error(false)
            // A management listener is reached directly; proxy variables are meant for the web.
            .proxy(None)
            .timeout_connect(Some(timeout))
            .timeout_global(Some(timeout))
            .max_response_header_size(64 * 1024)
            .user_agent(concat!("ferrymq-ctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", ep.user, ep.password));
        Client {
            agent,
            base: ep.base.clone(),
            authorization: format!("Basic {token}"),
            timeout,
        }
    }

    /// Sends one request and returns the answer whatever its status.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> CtlResult<Reply> {
        let url = format!("{}{}", self.base, path);
        let sent = match method {
            Method::Get | Method::Delete => {
                let mut r = if method == Method::Get {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                r = r.header("authorization", &self.authorization);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.call()
            }
            Method::Put | Method::Post => {
                let mut r = if method == Method::Put {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                r = r
                    .header("authorization", &self.authorization)
                    .content_type("application/json");
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.send(body.unwrap_or_default())
            }
        };
        let mut resp = sent.map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| self.transport_error(e))?;
        Ok(Reply { status, body })
    }

    /// Sends one request; an answer outside 2xx is an error carrying RabbitMQ's reason.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> CtlResult<Reply> {
        let r = self.call(method, path, body, headers)?;
        if (200..300).contains(&r.status) {
            Ok(r)
        } else {
            Err(CtlError::Api {
                method: method.as_str(),
                path: path.split('?').next().unwrap_or(path).to_string(),
                status: r.status,
                reason: r.reason(),
            })
        }
    }

    /// GET `path` as JSON.
    pub fn get_json(&self, path: &str) -> CtlResult<Value> {
        self.request(Method::Get, path, None, &[])?.json()
    }

    /// PUT or POST `body` as JSON.
    pub fn send_json(&self, method: Method, path: &str, body: &Value) -> CtlResult<Reply> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| CtlError::Failed(format!("cannot encode the request: {e}")))?;
        self.request(method, path, Some(&bytes), &[])
    }

    /// DELETE `path`.
    pub fn delete(&self, path: &str) -> CtlResult<()> {
        self.request(Method::Delete, path, None, &[]).map(|_| ())
    }

    fn transport_error(&self, e: ureq::Error) -> CtlError {
        let unreachable = |detail: String| CtlError::Unreachable {
            url: self.base.clone(),
            detail,
        };
        match e {
            ureq::Error::Timeout(_) => unreachable(format!(
                "no answer within {} s (--timeout)",
                self.timeout.as_secs_f64()
            )),
            ureq::Error::HostNotFound => unreachable("unknown host".into()),
            ureq::Error::ConnectionFailed => unreachable("connection failed".into()),
            ureq::Error::Io(e) => unreachable(e.to_string()),
            ureq::Error::Protocol(e) => unreachable(format!(
                "the answer is not HTTP ({e}); is this the management port?"
            )),
            ureq::Error::BadUri(u) => CtlError::Usage(format!("bad URL {u}")),
            ureq::Error::BodyExceedsLimit(n) => CtlError::Failed(format!(
                "the API's answer is larger than {n} bytes; narrow it (--name, --page, --columns)"
            )),
            other => CtlError::Failed(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(uri: Option<&str>) -> CtlResult<Endpoint> {
        Endpoint::resolve(&EndpointArgs {
            uri,
            ..Default::default()
        })
    }

    #[test]
    fn defaults_are_local_guest() {
        let e = resolve(None).unwrap();
        assert_eq!(e.base, "http://localhost:15672");
        assert_eq!((e.user.as_str(), e.password.as_str()), ("guest", "guest"));
    }

    #[test]
    fn uri_gives_credentials_host_port_and_prefix() {
        let e = resolve(Some("http://ad%40m:p%3Ass@broker:8080/rmq/")).unwrap();
        assert_eq!(e.base, "http://broker:8080/rmq");
        assert_eq!((e.user.as_str(), e.password.as_str()), ("ad@m", "p:ss"));
        let e = resolve(Some("http://[::1]:1567")).unwrap();
        assert_eq!(e.base, "http://[::1]:1567");
        let e = resolve(Some("HTTP://h")).unwrap();
        assert_eq!(e.base, "http://h:15672");
    }

    #[test]
    fn flags_override_the_uri() {
        let e = Endpoint::resolve(&EndpointArgs {
            uri: Some("http://a:b@h:1"),
            host: Some("::1"),
            port: Some(2),
            user: Some("u"),
            password: None,
        })
        .unwrap();
        assert_eq!(e.base, "http://[::1]:2");
        assert_eq!((e.user.as_str(), e.password.as_str()), ("u", "b"));
    }

    #[test]
    fn bad_uris_are_usage_errors() {
        for u in [
            "https://h",
            "amqp://h",
            "http://h:x",
            "http://[::1",
            "http://[::1]x",
        ] {
            assert!(matches!(resolve(Some(u)), Err(CtlError::Usage(_))), "{u}");
        }
    }

    #[test]
    fn paths_encode_each_segment() {
        assert_eq!(
            api_path(&["queues", "/", "a b/c"]),
            "/api/queues/%2F/a%20b%2Fc"
        );
        assert_eq!(
            with_query(
                "/api/queues",
                &[("name", "^a.*".into()), ("sort", String::new())]
            ),
            "/api/queues?name=%5Ea.%2A"
        );
    }

    #[test]
    fn reasons_come_from_rabbitmq_error_bodies() {
        let r = |status, body: &str| Reply {
            status,
            body: body.as_bytes().to_vec(),
        };
        assert_eq!(
            r(404, r#"{"error":"Object Not Found","reason":"Not Found"}"#).reason(),
            "Not Found"
        );
        assert_eq!(r(401, "").reason(), "Unauthorized");
        assert_eq!(
            r(400, r#"{"error":"bad_request","reason":""}"#).reason(),
            "bad_request"
        );
    }
}
