//! Policies: named rules that set queue and exchange features (TTL, limits, dead-lettering,
//! alternate exchange) on every entity whose name matches a pattern, changeable at runtime.

use crate::access::{compile_pattern, Pattern};
use crate::error::{CoreError, CoreResult};
use crate::queue_config::validate_policy_definition;
use ferrymq_store::definitions::Policy as PolicyDef;
use serde_json::{Map, Value};

/// What kind of entity a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    /// Queues only.
    Queues,
    /// Exchanges only.
    Exchanges,
    /// Both.
    All,
}

impl ApplyTo {
    /// Parses RabbitMQ's `apply-to` value.
    pub fn parse(s: &str) -> Option<ApplyTo> {
        match s {
            "queues" => Some(ApplyTo::Queues),
            "exchanges" => Some(ApplyTo::Exchanges),
            "all" | "" => Some(ApplyTo::All),
            _ => None,
        }
    }

    /// The `apply-to` value.
    pub fn as_str(&self) -> &'static str {
        match self {
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::All => "all",
        }
    }
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Its name, unique in the vhost.
    pub name: String,
    /// Regular expression matched against entity names (unanchored, as in RabbitMQ).
    pub pattern: Pattern,
    /// Which entities it applies to.
    pub apply_to: ApplyTo,
    /// Among matching policies, the highest priority is the one applied.
    pub priority: i64,
    /// The settings, with RabbitMQ's keys (`message-ttl`, `dead-letter-exchange`, ...).
    pub definition: Map<String, Value>,
}

impl Policy {
    /// Validates and builds a policy; errors name what is wrong.
    pub fn new(
        name: &str,
        pattern: &str,
        apply_to: &str,
        priority: i64,
        definition: Map<String, Value>,
    ) -> CoreResult<Policy> {
        // RabbitMQ's policy patterns are PCRE like permission patterns, compiled the same
        // way; an empty one matches every name.
        let pattern = compile_pattern(if pattern.is_empty() { ".*" } else { pattern })
            .map_err(|e| {
                CoreError::InvalidArgument(format!(
                    "invalid pattern '{pattern}' for policy '{name}': {e}"
                ))
            })?
            .ok_or_else(|| {
                CoreError::InvalidArgument(format!("empty pattern for policy '{name}'"))
            })?;
        let apply_to = ApplyTo::parse(apply_to).ok_or_else(|| {
            CoreError::InvalidArgument(format!(
                "invalid apply-to '{apply_to}' for policy '{name}': expected queues, exchanges or all"
            ))
        })?;
        if definition.is_empty() {
            return Err(CoreError::InvalidArgument(format!(
                "policy '{name}' has an empty definition"
            )));
        }
        validate_policy_definition(&definition)?;
        Ok(Policy {
            name: name.to_string(),
            pattern,
            apply_to,
            priority,
            definition,
        })
    }

    /// Builds a policy from its definitions-document form.
    pub fn from_def(d: &PolicyDef) -> CoreResult<Policy> {
        Policy::new(
            &d.name,
            &d.pattern,
            &d.apply_to,
            d.priority,
            d.definition.clone(),
        )
    }

    /// The definitions-document form.
    pub fn to_def(&self, vhost: &str) -> PolicyDef {
        PolicyDef {
            vhost: vhost.to_string(),
            name: self.name.clone(),
            pattern: self.pattern.as_str().to_string(),
            apply_to: self.apply_to.as_str().to_string(),
            definition: self.definition.clone(),
            priority: self.priority,
        }
    }

    fn applies(&self, name: &str, queue: bool) -> bool {
        let kind = match self.apply_to {
            ApplyTo::All => true,
            ApplyTo::Queues => queue,
            ApplyTo::Exchanges => !queue,
        };
        kind && self.pattern.is_match(name).unwrap_or(false)
    }
}

/// The policy that applies to a queue (`queue` = true) or exchange named `name`: the matching
/// one with the highest priority (ties: the first by name).
pub fn effective<'a>(policies: &'a [Policy], name: &str, queue: bool) -> Option<&'a Policy> {
    policies
        .iter()
        .filter(|p| p.applies(name, queue))
        .max_by(|a, b| a.priority.cmp(&b.priority).then(b.name.cmp(&a.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn highest_priority_match_of_the_right_kind_wins() {
        let ps = vec![
            Policy::new("low", "^orders", "queues", 0, def(r#"{"max-length": 10}"#)).unwrap(),
            Policy::new("high", "^orders\\.", "all", 5, def(r#"{"max-length": 5}"#)).unwrap(),
            Policy::new(
                "ex",
                ".*",
                "exchanges",
                9,
                def(r#"{"alternate-exchange": "ae"}"#),
            )
            .unwrap(),
        ];
        assert_eq!(effective(&ps, "orders.eu", true).unwrap().name, "high");
        assert_eq!(effective(&ps, "ordersx", true).unwrap().name, "low");
        assert!(effective(&ps, "other", true).is_none());
        assert_eq!(effective(&ps, "orders.eu", false).unwrap().name, "ex");
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        let e = Policy::new("p", "(", "queues", 0, def(r#"{"max-length": 1}"#)).unwrap_err();
        assert!(e.to_string().contains("invalid pattern"));
        let e = Policy::new("p", ".*", "nodes", 0, def(r#"{"max-length": 1}"#)).unwrap_err();
        assert!(e.to_string().contains("apply-to"));
        let e = Policy::new("p", ".*", "queues", 0, def(r#"{"colour": "red"}"#)).unwrap_err();
        assert!(e.to_string().contains("colour"));
    }
}
