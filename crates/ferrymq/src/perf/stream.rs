//! The perf client's transport: plain TCP or TLS (`amqps://`), as read and write halves the
//! publisher and consumer tasks own separately.

use super::uri::AmqpUri;
use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::IoSlice;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A broker to connect to: its URI and, for `amqps://`, the TLS client configuration.
#[derive(Clone)]
pub struct Target {
    /// The parsed URI.
    pub uri: AmqpUri,
    tls: Option<TlsConnector>,
}

impl Target {
    /// Parses `uri`; an `amqps://` URI needs `cacert`, the PEM file of the CA that signed the
    /// broker's certificate (the perf tool trusts nothing else).
    pub fn new(uri: &str, cacert: Option<&Path>) -> anyhow::Result<Target> {
        let uri: AmqpUri = uri.parse()?;
        let tls = match (uri.tls, cacert) {
            (false, _) => None,
            (true, None) => bail!(
                "an amqps:// URI needs --cacert FILE, the CA certificate that signed the broker's"
            ),
            (true, Some(path)) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("cannot read CA file {}", path.display()))?
                {
                    let c = c.with_context(|| format!("bad PEM in {}", path.display()))?;
                    roots.add(c).with_context(|| {
                        format!("unusable CA certificate in {}", path.display())
                    })?;
                }
                if roots.is_empty() {
                    bail!("no certificate in CA file {}", path.display());
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(TlsConnector::from(Arc::new(config)))
            }
        };
        Ok(Target { uri, tls })
    }

    /// Opens a TCP connection (and a TLS session on it for `amqps://`).
    pub async fn connect(&self) -> anyhow::Result<(ReadHalf, WriteHalf)> {
        let s = TcpStream::connect(&self.uri.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.uri.addr))?;
        s.set_nodelay(true)?;
        let Some(tls) = &self.tls else {
            let (rd, wr) = s.into_split();
            return Ok((ReadHalf::Plain(rd), WriteHalf::Plain(wr)));
        };
        let name = ServerName::try_from(self.uri.host.clone())
            .with_context(|| format!("'{}' is not a valid TLS server name", self.uri.host))?;
        let s = tls
            .connect(name, s)
            .await
            .with_context(|| format!("TLS handshake with {} failed", self.uri.addr))?;
        let (rd, wr) = tokio::io::split(s);
        Ok((ReadHalf::Tls(rd), WriteHalf::Tls(wr)))
    }
}

/// The read half of a plain or TLS connection.
pub enum ReadHalf {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// TLS.
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

/// The write half of a plain or TLS connection.
pub enum WriteHalf {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// TLS.
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

impl WriteHalf {
    /// Writes all of `buf` and flushes it: TLS may hold encrypted bytes back until a flush.
    pub async fn send_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.write_all(buf).await?;
        self.flush().await
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteHalf::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Plain(w) => w.is_write_vectored(),
            WriteHalf::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
