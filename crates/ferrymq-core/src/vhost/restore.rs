//! Re-creating a vhost's durable exchanges, queues (with their messages) and bindings from
//! the definitions at start. Nothing is saved here: the document already holds them.

use super::topology::routing_kind;
use super::{not_found_queue, VHost};
use crate::error::{CoreError, CoreResult};
use crate::exchange::{Destination, ExchangeOptions};
use crate::queue::QueueOptions;
use crate::queue_config::QueueConfig;
use crate::queue_factory;
use crate::value::table_from_json;
use ferrymq_store::definitions::{BindingDef, ExchangeDef, QueueDef};
use std::sync::Arc;

impl VHost {
    /// Re-creates a durable exchange from the definitions. Returns the directory of a
    /// delayed-message exchange's messages.
    pub(crate) fn restore_exchange(
        &self,
        d: &ExchangeDef,
    ) -> CoreResult<Option<std::path::PathBuf>> {
        let kind = routing_kind(&d.kind, &table_from_json(&d.arguments))?;
        let options = ExchangeOptions {
            durable: true,
            auto_delete: d.auto_delete,
            internal: d.internal,
            arguments: table_from_json(&d.arguments),
        };
        if self.exchanges.read().contains_key(&d.name) {
            return Ok(None);
        }
        let inc = d.incarnation.clone();
        let dir = match (&self.persist, d.kind == crate::exchange::DELAYED_TYPE) {
            (Some(p), true) => Some(p.delayed_dir(&self.name, &d.name, inc.as_deref())),
            _ => None,
        };
        let x = self.new_exchange(&d.name, &d.kind, kind, options, inc, true)?;
        self.exchanges.write().insert(d.name.clone(), x);
        Ok(dir)
    }

    /// Re-creates a durable queue from the definitions and recovers its messages from its
    /// log. Returns its directory and how many messages came back.
    pub(crate) fn restore_queue(&self, d: &QueueDef) -> CoreResult<(std::path::PathBuf, u64)> {
        let Some(p) = &self.persist else {
            return Err(CoreError::Internal("no data directory".into()));
        };
        let options = QueueOptions {
            durable: true,
            exclusive: false,
            auto_delete: d.auto_delete,
            arguments: table_from_json(&d.arguments),
        };
        if let Err(e) = QueueConfig::from_args(&d.name, &self.name, &options.arguments) {
            tracing::warn!("{e}: restored as the version that saved it accepted it");
        }
        let cfg = QueueConfig::from_stored_args(&d.name, &self.name, &options.arguments)?;
        let inc = d.incarnation.as_deref();
        let (q, dir, n) = queue_factory::recover(p, &self.name, &d.name, inc, options, &cfg)?;
        let q = Arc::new(q);
        self.queues.write().insert(d.name.clone(), q.clone());
        self.attach_queue(&q, cfg);
        Ok((dir, n))
    }

    /// Re-creates a binding from the definitions.
    pub(crate) fn restore_binding(&self, d: &BindingDef) -> CoreResult<()> {
        let source = self.exchange(&d.source)?;
        let dest = match d.destination_type.as_str() {
            "exchange" => Destination::Exchange(self.exchange(&d.destination)?),
            _ => Destination::Queue(
                self.queues
                    .read()
                    .get(&d.destination)
                    .cloned()
                    .ok_or_else(|| not_found_queue(&d.destination, &self.name))?,
            ),
        };
        source.bind(dest, &d.routing_key, table_from_json(&d.arguments));
        Ok(())
    }
}
