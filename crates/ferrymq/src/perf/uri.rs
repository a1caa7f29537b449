//! `amqp://user:pass@host:port/vhost` and `amqps://...` parsing.

use anyhow::{bail, Context};

/// The parts of an AMQP URI the perf client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUri {
    /// Login.
    pub user: String,
    /// Password.
    pub password: String,
    /// host:port.
    pub addr: String,
    /// The host alone (the TLS server name).
    pub host: String,
    /// `amqps://`: TLS, default port 5671.
    pub tls: bool,
    /// Virtual host, percent-decoded (`%2f` → `/`).
    pub vhost: String,
}

impl std::str::FromStr for AmqpUri {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (rest, tls) = match (s.strip_prefix("amqp://"), s.strip_prefix("amqps://")) {
            (Some(r), _) => (r, false),
            (_, Some(r)) => (r, true),
            _ => bail!("URI must start with amqp:// or amqps://, got '{s}'"),
        };
        let (auth, hostpath) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (user, password) = match auth {
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (decode(u)?, decode(p)?),
                None => (decode(a)?, String::new()),
            },
            None => ("guest".to_string(), "guest".to_string()),
        };
        let (hostport, vhost) = match hostpath.split_once('/') {
            Some((h, v)) if !v.is_empty() => (h, decode(v)?),
            Some((h, _)) => (h, "/".to_string()),
            None => (hostpath, "/".to_string()),
        };
        if hostport.is_empty() {
            bail!("URI '{s}' has no host");
        }
        let default_port = if tls { 5671 } else { 5672 };
        // host, host:port, [v6], [v6]:port
        let (host, addr) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !p.contains(']') => {
                (h.to_string(), hostport.to_string())
            }
            _ => (hostport.to_string(), format!("{hostport}:{default_port}")),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(AmqpUri {
            user,
            password,
            addr,
            host,
            tls,
            vhost,
        })
    }
}

fn decode(s: &str) -> anyhow::Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .with_context(|| format!("bad escape in '{s}'"))?;
            out.push(u8::from_str_radix(hex, 16).with_context(|| format!("bad escape in '{s}'"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).with_context(|| format!("'{s}' is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rabbitmq_style_uris() {
        let u: AmqpUri = "amqp://guest:guest@localhost:5672/%2f".parse().unwrap();
        assert_eq!(
            u,
            AmqpUri {
                user: "guest".into(),
                password: "guest".into(),
                addr: "localhost:5672".into(),
                host: "localhost".into(),
                tls: false,
                vhost: "/".into()
            }
        );
        let u: AmqpUri = "amqps://broker.example:5999/prod".parse().unwrap();
        assert_eq!(
            (u.addr.as_str(), u.host.as_str(), u.tls),
            ("broker.example:5999", "broker.example", true)
        );
        let u: AmqpUri = "amqps://127.0.0.1".parse().unwrap();
        assert_eq!(
            (u.addr.as_str(), u.host.as_str()),
            ("127.0.0.1:5671", "127.0.0.1")
        );
        let u: AmqpUri = "amqp://[::1]:5673".parse().unwrap();
        assert_eq!((u.addr.as_str(), u.host.as_str()), ("[::1]:5673", "::1"));
        let u: AmqpUri = "amqp://127.0.0.1".parse().unwrap();
        assert_eq!(
            (u.addr.as_str(), u.vhost.as_str(), u.user.as_str()),
            ("127.0.0.1:5672", "/", "guest")
        );
        let u: AmqpUri = "amqp://a%40b:p%3Aw@h:1/prod".parse().unwrap();
        assert_eq!(
            (u.user.as_str(), u.password.as_str(), u.vhost.as_str()),
            ("a@b", "p:w", "prod")
        );
        assert!("http://x".parse::<AmqpUri>().is_err());
        assert!("amqp://h/%zz".parse::<AmqpUri>().is_err());
    }
}
