//! FerryMQ broker core: vhosts, exchanges, bindings, routing, queues, consumers and acks.
//!
//! This crate knows nothing about sockets. It does hold AMQP's encoding of field tables and
//! properties ([`wire`]), because messages keep their properties in that form. Protocol
//! crates (AMQP, later MQTT) authenticate a client with [`Broker::authenticate`], open a
//! [`Session`] and translate their frames into its verbs, which check the caller's
//! permissions; they receive deliveries through the [`ConsumerSink`] trait they implement.
//! Operators change users, vhosts, permissions, policies and limits through the admin API
//! ([`admin`]).

pub mod access;
pub mod admin;
pub mod auth;
pub mod blocking;
pub mod broker;
pub mod connections;
pub mod consumer;
pub mod dead_letter;
pub mod dedup;
pub mod error;
pub mod events;
pub mod exchange;
pub mod expiry;
pub mod flow;
pub mod held_worker;
pub mod limits;
pub mod message;
pub mod paged_store;
pub mod persist;
pub mod policy;
pub mod priority_store;
pub mod queue;
pub mod queue_config;
pub mod queue_factory;
pub mod session;
pub mod stats;
pub mod store;
pub mod timers;
pub mod trace;
pub mod value;
pub mod vhost;
pub mod wire;

pub use broker::{Broker, BrokerConfig, ConnectionId};
pub use consumer::{ConsumerSink, SinkRefusal};
pub use error::CoreError;
pub use exchange::{Exchange, ExchangeKind};
pub use ferrymq_store::{FsyncPolicy, Pending, SyncerRef};
pub use message::{LazyHeaders, Message, Properties, QueuedMessage};
pub use persist::{PersistConfig, Persistence};
pub use queue::{Queue, QueueOptions};
pub use session::{ChannelPermit, Session};
pub use value::{FieldTable, FieldValue};
pub use vhost::VHost;
