//! FerryMQ broker core: vhosts, exchanges, bindings, routing, queues, consumers and acks.
//!
//! This crate knows nothing about sockets. It does hold AMQP's encoding of field tables and
//! properties ([`wire`]), because messages keep their properties in that form. Protocol
//! crates (AMQP, later MQTT) translate their frames into calls on [`Broker`] and [`VHost`], and
//! receive deliveries through the [`ConsumerSink`] trait they implement.

pub mod auth;
pub mod broker;
pub mod consumer;
pub mod dead_letter;
pub mod dedup;
pub mod error;
pub mod exchange;
pub mod expiry;
pub mod message;
pub mod paged_store;
pub mod persist;
pub mod policy;
pub mod priority_store;
pub mod queue;
pub mod queue_config;
pub mod store;
pub mod timers;
pub mod value;
pub mod vhost;
pub mod wire;

pub use broker::{Broker, BrokerConfig, ConnectionId};
pub use consumer::{ConsumerSink, SinkRefusal};
pub use error::CoreError;
pub use exchange::{Exchange, ExchangeKind};
pub use ferrymq_store::FsyncPolicy;
pub use message::{LazyHeaders, Message, Properties, QueuedMessage};
pub use persist::{PersistConfig, Persistence};
pub use queue::{Queue, QueueOptions};
pub use value::{FieldTable, FieldValue};
pub use vhost::VHost;
