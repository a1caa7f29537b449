//! AMQP 0-9-1 for FerryMQ: the wire codec and the connection/channel state machines that turn
//! frames into calls on `ferrymq-core`.

mod channel;
pub mod codec;
mod connection;
mod erlang_text;
pub mod error;
mod low_water;
mod outbox;
pub mod server;
pub mod tls;

pub use error::AmqpError;
pub use server::{AmqpConfig, AmqpServer};
