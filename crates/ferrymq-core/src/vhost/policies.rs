//! Policies of a vhost: set, cleared and applied to its queues and exchanges at runtime.

use super::VHost;
use crate::error::{CoreError, CoreResult};
use crate::policy::{self, Policy};
use crate::queue::Queue;
use crate::queue_config::QueueConfig;
use ferrymq_store::Pending;
use std::sync::Arc;

impl VHost {
    /// Adds or replaces a policy and applies it to the matching queues and exchanges.
    /// Returns the definitions write to wait for.
    pub(crate) fn set_policy(&self, p: Policy) -> CoreResult<Pending> {
        let _t = self.topology.lock();
        self.check_not_deleted()?;
        let def = p.to_def(&self.name);
        let ((), saved) = self.persist_then(
            |persist| persist.policy_set(def),
            || {
                let mut ps = self.policies.write();
                ps.retain(|x| x.name != p.name);
                ps.push(p);
            },
        )?;
        self.apply_policies();
        Ok(saved)
    }

    /// Removes a policy; the entities it applied to fall back to their own arguments (or the
    /// next matching policy). Clearing a missing policy is an error naming it.
    pub(crate) fn clear_policy(&self, name: &str) -> CoreResult<Pending> {
        let _t = self.topology.lock();
        if !self.policies.read().iter().any(|p| p.name == name) {
            return Err(CoreError::NotFound(format!(
                "no policy '{name}' in vhost '{}'",
                self.name
            )));
        }
        let ((), saved) = self.persist_then(
            |p| p.policy_cleared(&self.name, name),
            || self.policies.write().retain(|p| p.name != name),
        )?;
        self.apply_policies();
        Ok(saved)
    }

    /// The policies of this vhost.
    pub fn policies(&self) -> Vec<Policy> {
        self.policies.read().clone()
    }

    /// Restores a policy from the definitions (no save, applied to what exists).
    pub(crate) fn restore_policy(&self, p: Policy) {
        self.policies.write().push(p);
        self.apply_policies();
    }

    /// Recomputes every queue's and exchange's settings from its arguments and the policies.
    fn apply_policies(&self) {
        let policies = self.policies.read().clone();
        for q in self.queues() {
            match QueueConfig::from_stored_args(&q.name, &self.name, &q.options.arguments) {
                Ok(cfg) => q.set_config(cfg.with_policy(
                    policy::effective(&policies, &q.name, true).map(|p| &p.definition),
                )),
                Err(e) => tracing::warn!("queue '{}': {e}", q.name),
            }
        }
        for x in self.exchanges() {
            x.set_policy_alternate_exchange(exchange_policy_ae(&policies, &x.name));
        }
    }

    /// The alternate exchange the policies set on exchange `name`, if any.
    pub(super) fn policy_alternate_exchange(&self, name: &str) -> Option<String> {
        exchange_policy_ae(&self.policies.read(), name)
    }

    /// Hands a new queue its vhost and its settings (declaration plus policy).
    pub(super) fn attach_queue(&self, q: &Arc<Queue>, cfg: QueueConfig) {
        let cfg = {
            let policies = self.policies.read();
            cfg.with_policy(policy::effective(&policies, &q.name, true).map(|p| &p.definition))
        };
        q.attach(self.me.clone(), cfg);
    }
}

/// The alternate exchange a policy sets on exchange `name`, if any.
fn exchange_policy_ae(policies: &[Policy], name: &str) -> Option<String> {
    policy::effective(policies, name, false)
        .and_then(|p| p.definition.get("alternate-exchange"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}
