//! AMQPS: TLS for the AMQP listener with rustls and its ring provider (ADR 0008).
//!
//! `load` turns the operator's PEM files into a rustls server configuration, `reload` keeps
//! the one new connections get (replaced on SIGHUP or when the files change, never for
//! connections already open), and `handshake` runs the TLS handshake of one connection and
//! reads the verified client certificate the EXTERNAL mechanism logs in with.

mod handshake;
mod load;
mod reload;

pub(crate) use handshake::accept;
pub use handshake::ClientCert;
pub use load::{server_config, TlsError, TlsSettings, MAX_PEM_FILE};
pub use reload::ServerTls;

#[cfg(test)]
mod tests;
