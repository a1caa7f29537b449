//! Importing a definitions document (RabbitMQ's format) into a running broker. The whole
//! document is checked before any of it is applied, so one bad entry (a pattern that does
//! not compile, an unknown exchange type, a binding to nothing) leaves the broker as it was
//! instead of half-imported.

use super::{
    check_patterns, check_topic_patterns, load_identity_into, unknown_user, unknown_vhost,
};
use crate::access::TopicPermission;
use crate::broker::{Broker, Identity};
use crate::error::{CoreError, CoreResult};
use crate::exchange::ExchangeOptions;
use crate::policy::Policy;
use crate::queue::QueueOptions;
use crate::queue_config::QueueConfig;
use crate::value::table_from_json;
use crate::vhost::{default_exchange_refused, routing_kind, STANDARD_EXCHANGES};
use ferrymq_store::definitions::{BindingDef, Definitions, ExchangeDef, QueueDef};
use ferrymq_store::Pending;

fn exchange_options(x: &ExchangeDef) -> ExchangeOptions {
    ExchangeOptions {
        durable: x.durable,
        auto_delete: x.auto_delete,
        internal: x.internal,
        arguments: table_from_json(&x.arguments),
    }
}

fn queue_options(q: &QueueDef) -> QueueOptions {
    QueueOptions {
        durable: q.durable,
        exclusive: false,
        auto_delete: q.auto_delete,
        arguments: table_from_json(&q.arguments),
    }
}

impl Broker {
    /// Imports a definitions document into the running broker, as RabbitMQ's
    /// `load_definitions` does at boot: users, vhosts, permissions, topic permissions,
    /// limits, policies, then exchanges, queues and bindings are added or replaced; nothing
    /// else is removed. Every entry is checked first; an error names the first bad one and
    /// nothing is applied.
    pub fn import_definitions(&self, d: &Definitions) -> CoreResult<()> {
        let staged = self.check_definitions(d)?;
        for v in &d.vhosts {
            self.add_vhost(&v.name)?;
        }
        self.change_identity(|id| {
            for (k, u) in staged.users {
                id.users.insert(k, u);
            }
            id.permissions.extend(staged.permissions);
            for (k, list) in staged.topic_permissions {
                let cur = id.topic_permissions.entry(k).or_default();
                for t in list {
                    cur.retain(|x| x.exchange != t.exchange);
                    cur.push(t);
                }
            }
            id.vhost_limits.extend(staged.vhost_limits);
            Ok(())
        })?;
        let vhost = |name: &str| self.vhost(name).ok_or_else(|| unknown_vhost(name));
        // Every change goes to the definitions journal; one group commit at the end makes
        // them all durable before the import reports success.
        let mut saved = Pending::default();
        for p in &d.policies {
            saved.merge(vhost(&p.vhost)?.set_policy(Policy::from_def(p)?)?);
        }
        for x in &d.exchanges {
            let v = vhost(&x.vhost)?;
            saved.merge(v.declare_exchange(&x.name, &x.kind, exchange_options(x), false)?);
        }
        for q in &d.queues {
            let v = vhost(&q.vhost)?;
            saved.merge(
                v.declare_queue(&q.name, queue_options(q), false, 0, None)?
                    .2,
            );
        }
        for b in &d.bindings {
            let v = vhost(&b.vhost)?;
            let args = table_from_json(&b.arguments);
            saved.merge(match b.destination_type.as_str() {
                "exchange" => v.bind_exchange(&b.destination, &b.source, &b.routing_key, args)?,
                _ => v.bind_queue(&b.destination, &b.source, &b.routing_key, args, 0)?,
            });
        }
        self.wait_saved(&saved)
    }

    /// Checks every entry of `d` against itself and the running broker; returns the users,
    /// permissions and limits it defines, ready to merge.
    fn check_definitions(&self, d: &Definitions) -> CoreResult<Identity> {
        let in_doc = |v: &str| d.vhosts.iter().any(|x| x.name == v);
        let vhost_known = |v: &str| match in_doc(v) || self.vhost(v).is_some() {
            true => Ok(()),
            false => Err(unknown_vhost(v)),
        };
        if d.vhosts.iter().any(|v| v.name.is_empty()) {
            return Err(CoreError::InvalidArgument(
                "vhost name must not be empty".into(),
            ));
        }
        if d.users.iter().any(|u| u.name.is_empty()) {
            return Err(CoreError::InvalidArgument(
                "user name must not be empty".into(),
            ));
        }
        let mut staged = Identity::default();
        load_identity_into(&mut staged, d)?;
        let user_known = |u: &str| match staged.users.contains_key(u)
            || self.identity.read().users.contains_key(u)
        {
            true => Ok(()),
            false => Err(unknown_user(u)),
        };
        for p in &d.permissions {
            user_known(&p.user)?;
            vhost_known(&p.vhost)?;
            check_patterns(&[&p.configure, &p.write, &p.read])?;
        }
        for t in &d.topic_permissions {
            user_known(&t.user)?;
            vhost_known(&t.vhost)?;
            check_topic_patterns(&TopicPermission {
                exchange: t.exchange.clone(),
                write: t.write.clone(),
                read: t.read.clone(),
            })?;
        }
        for p in &d.policies {
            vhost_known(&p.vhost)?;
            Policy::from_def(p)?;
        }
        for x in &d.exchanges {
            vhost_known(&x.vhost)?;
            let opts = exchange_options(x);
            match self.vhost(&x.vhost) {
                Some(v) => v.exchange_to_create(&x.name, &x.kind, &opts).map(|_| ())?,
                None if x.name.is_empty() => return Err(default_exchange_refused()),
                None => routing_kind(&x.kind, &opts.arguments).map(|_| ())?,
            }
        }
        for q in &d.queues {
            vhost_known(&q.vhost)?;
            let opts = queue_options(q);
            QueueConfig::from_args(&q.name, &q.vhost, &opts.arguments)?.check_properties(
                &q.name,
                &q.vhost,
                opts.durable,
                opts.exclusive,
                opts.auto_delete,
                q.name.is_empty(),
            )?;
            if let Some(v) = self.vhost(&q.vhost) {
                v.existing_queue_for_declare(&q.name, &opts, 0)?;
            }
        }
        for b in &d.bindings {
            vhost_known(&b.vhost)?;
            self.check_binding(d, b)?;
        }
        Ok(staged)
    }

    /// A binding's source and destination must exist, in the broker or in the document.
    fn check_binding(&self, d: &Definitions, b: &BindingDef) -> CoreResult<()> {
        if b.source.is_empty() || b.destination.is_empty() && b.destination_type == "exchange" {
            return Err(default_exchange_refused());
        }
        let live = self.vhost(&b.vhost);
        let exchange_exists = |name: &str| {
            STANDARD_EXCHANGES.iter().any(|(n, _)| *n == name)
                || d.exchanges
                    .iter()
                    .any(|x| x.vhost == b.vhost && x.name == name)
                || live.as_ref().is_some_and(|v| v.exchange(name).is_ok())
        };
        let missing = |kind: &str, name: &str| {
            CoreError::NotFound(format!(
                "no {kind} '{name}' in vhost '{}' for binding from '{}'",
                b.vhost, b.source
            ))
        };
        if !exchange_exists(&b.source) {
            return Err(missing("exchange", &b.source));
        }
        let dest_exists = match b.destination_type.as_str() {
            "exchange" => exchange_exists(&b.destination),
            _ => {
                d.queues
                    .iter()
                    .any(|q| q.vhost == b.vhost && q.name == b.destination)
                    || live
                        .as_ref()
                        .is_some_and(|v| v.queue(&b.destination, 0).is_ok())
            }
        };
        match dest_exists {
            true => Ok(()),
            false => Err(missing(&b.destination_type, &b.destination)),
        }
    }
}
