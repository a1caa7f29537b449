//! RabbitMQ's access-control rules: per-vhost configure / write / read regular expressions
//! over resource names, and topic permissions over routing keys, compiled once per session.

use crate::error::{CoreError, CoreResult};

/// Largest compiled size of one permission pattern: patterns come from operators, but a
/// definitions file is input too, and an enormous automaton must not be built from it.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// Which permission an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Declare and delete resources.
    Configure,
    /// Publish to an exchange, bind into a queue or exchange.
    Write,
    /// Consume from or purge a queue, bind from an exchange.
    Read,
}

impl Perm {
    /// The word RabbitMQ uses for it in topic-permission errors.
    pub fn as_str(&self) -> &'static str {
        match self {
            Perm::Configure => "configure",
            Perm::Write => "write",
            Perm::Read => "read",
        }
    }
}

/// The kind of resource an operation touches, as named in error texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// A queue.
    Queue,
    /// An exchange.
    Exchange,
}

impl Resource {
    /// The word RabbitMQ uses for it in error texts.
    pub fn as_str(&self) -> &'static str {
        match self {
            Resource::Queue => "queue",
            Resource::Exchange => "exchange",
        }
    }
}

/// Per-vhost permissions of a user as configured: regexes over resource names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// Which resources the user may declare/delete.
    pub configure: String,
    /// Which resources the user may publish to / bind into.
    pub write: String,
    /// Which resources the user may consume from / bind from.
    pub read: String,
}

impl Permission {
    /// Full access (`.*` for all three), as `guest` has on `/`.
    pub fn all() -> Self {
        Permission {
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        }
    }
}

/// Topic permissions of a user on one topic exchange: regexes over routing keys, which may
/// use the variables `{username}` and `{vhost}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPermission {
    /// The topic exchange they apply to.
    pub exchange: String,
    /// Routing keys the user may publish with.
    pub write: String,
    /// Binding keys the user may bind (consume) with.
    pub read: String,
}

/// Most backtracking steps one match of a pattern with look-around or back-references may
/// take: the names matched are the client's, and a pattern must not be turned into a way to
/// stall the broker. A match that runs out is a refusal.
const BACKTRACK_LIMIT: usize = 100_000;

/// A compiled pattern. RabbitMQ's patterns are PCRE: those without look-around or
/// back-references run on `regex`'s linear-time engine; the others (e.g. `^(?!amq\.).*`)
/// on `fancy_regex`'s bounded backtracker.
pub type Pattern = fancy_regex::Regex;

/// Compiles a permission pattern. RabbitMQ matches unanchored, and an empty pattern means
/// `^$`: it grants only the empty name (never a queue or exchange, since the default
/// exchange is checked as `amq.default`; for topic permissions, the empty routing key).
/// `None` is "grants nothing".
pub fn compile_pattern(pattern: &str) -> CoreResult<Option<Pattern>> {
    let pattern = if pattern.is_empty() { "^$" } else { pattern };
    fancy_regex::RegexBuilder::new(pattern)
        .delegate_size_limit(PATTERN_SIZE_LIMIT)
        .backtrack_limit(BACKTRACK_LIMIT)
        .build()
        .map(Some)
        .map_err(|e| {
            CoreError::InvalidArgument(format!("invalid regular expression '{pattern}': {e}"))
        })
}

fn compile_or_deny(pattern: &str) -> Option<Pattern> {
    compile_pattern(pattern).unwrap_or_else(|e| {
        // Only reachable for patterns that bypassed validation (an old definitions file);
        // refusing is the safe reading.
        tracing::warn!("{e}; treating it as granting nothing");
        None
    })
}

fn matches(re: &Option<Pattern>, name: &str) -> bool {
    re.as_ref().is_some_and(|r| match r.is_match(name) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("pattern '{}' gave up on '{name}': {e}; refused", r.as_str());
            false
        }
    })
}

/// A user's permissions on one vhost, compiled.
#[derive(Debug, Clone)]
pub struct CompiledPermission {
    configure: Option<Pattern>,
    write: Option<Pattern>,
    read: Option<Pattern>,
}

impl CompiledPermission {
    /// Compiles `p`; a pattern that does not compile grants nothing.
    pub fn new(p: &Permission) -> Self {
        CompiledPermission {
            configure: compile_or_deny(&p.configure),
            write: compile_or_deny(&p.write),
            read: compile_or_deny(&p.read),
        }
    }

    /// Whether `perm` is granted on a resource called `name`.
    pub fn allows(&self, perm: Perm, name: &str) -> bool {
        match perm {
            Perm::Configure => matches(&self.configure, name),
            Perm::Write => matches(&self.write, name),
            Perm::Read => matches(&self.read, name),
        }
    }
}

/// A user's topic permissions on one exchange, compiled with the variables expanded.
#[derive(Debug, Clone)]
pub struct CompiledTopicPermission {
    /// The exchange they apply to.
    pub exchange: String,
    write: Option<Pattern>,
    read: Option<Pattern>,
}

impl CompiledTopicPermission {
    /// Compiles `p` for `user` in `vhost`, expanding `{username}` and `{vhost}`.
    pub fn new(p: &TopicPermission, user: &str, vhost: &str) -> Self {
        let expand = |s: &str| {
            s.replace("{username}", &fancy_regex::escape(user))
                .replace("{vhost}", &fancy_regex::escape(vhost))
        };
        CompiledTopicPermission {
            exchange: p.exchange.clone(),
            write: compile_or_deny(&expand(&p.write)),
            read: compile_or_deny(&expand(&p.read)),
        }
    }

    /// Whether `perm` (write or read) is granted for `routing_key`.
    pub fn allows(&self, perm: Perm, routing_key: &str) -> bool {
        match perm {
            Perm::Write => matches(&self.write, routing_key),
            Perm::Read => matches(&self.read, routing_key),
            Perm::Configure => true,
        }
    }
}

/// RabbitMQ's text for a refused resource access.
pub fn refused(kind: Resource, name: &str, vhost: &str, user: &str) -> CoreError {
    CoreError::AccessRefused(format!(
        "access to {} '{name}' in vhost '{vhost}' refused for user '{user}'",
        kind.as_str()
    ))
}

/// RabbitMQ's text for a refused topic access (the same for write and read).
pub fn topic_refused(routing_key: &str, exchange: &str, vhost: &str, user: &str) -> CoreError {
    CoreError::AccessRefused(format!(
        "access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_unanchored_and_empty_grants_nothing() {
        let p = CompiledPermission::new(&Permission {
            configure: "^app\\.".into(),
            write: "".into(),
            read: "logs".into(),
        });
        assert!(p.allows(Perm::Configure, "app.q"));
        assert!(!p.allows(Perm::Configure, "x.app.q"));
        assert!(!p.allows(Perm::Write, "anything"));
        assert!(p.allows(Perm::Write, ""));
        assert!(p.allows(Perm::Read, "my-logs-queue"));
    }

    #[test]
    fn bad_patterns_are_refused_at_set_time_and_deny_when_loaded() {
        assert!(compile_pattern("(unclosed").is_err());
        assert!(compile_pattern("(a{1000}){1000}").is_err());
        let p = CompiledPermission::new(&Permission {
            configure: "(unclosed".into(),
            write: ".*".into(),
            read: ".*".into(),
        });
        assert!(!p.allows(Perm::Configure, "(unclosed"));
    }

    #[test]
    fn rabbitmq_look_around_patterns_work_and_backtracking_is_bounded() {
        // A pattern RabbitMQ's documentation uses: everything but the amq. names.
        let p = CompiledPermission::new(&Permission {
            configure: "^(?!amq\\.).*".into(),
            // Exponential backtracking on a long name of a's followed by "!".
            write: "^(a|a)*(?=b)".into(),
            read: "^(\\w+)-\\1$".into(),
        });
        assert!(p.allows(Perm::Configure, "orders"));
        assert!(!p.allows(Perm::Configure, "amq.gen-1"));
        assert!(p.allows(Perm::Read, "ab-ab"));
        assert!(!p.allows(Perm::Read, "ab-cd"));
        // Gives up (and refuses) instead of running for ever.
        assert!(!p.allows(Perm::Write, &format!("{}!", "a".repeat(200))));
    }

    #[test]
    fn topic_variables_are_expanded_literally() {
        let t = CompiledTopicPermission::new(
            &TopicPermission {
                exchange: "amq.topic".into(),
                write: "^{username}\\.".into(),
                read: "^{vhost}$".into(),
            },
            "a.b",
            "/",
        );
        assert!(t.allows(Perm::Write, "a.b.x"));
        // The dot in the user name is literal, not "any character".
        assert!(!t.allows(Perm::Write, "aXb.x"));
        assert!(t.allows(Perm::Read, "/"));
        assert!(!t.allows(Perm::Read, "/x"));
    }
}
