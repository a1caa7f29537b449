//! The TLS handshake of one connection, and who its verified client certificate names.

use rustls::ServerConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use x509_cert::der::{Decode, Tag, Tagged};

/// A client certificate the handshake verified against the configured CA bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject's common name (several CNs joined with `,`, as RabbitMQ does); `None`
    /// when the subject has no CN the broker can read.
    pub common_name: Option<String>,
}

impl ClientCert {
    /// Reads the subject CN of a DER certificate.
    pub fn from_der(der: &[u8]) -> ClientCert {
        ClientCert {
            common_name: common_name(der),
        }
    }
}

/// Runs the server side of the TLS handshake on `stream`, giving up at `deadline` (the AMQP
/// handshake timeout, which the TLS handshake counts towards). Returns the TLS stream and the
/// client's verified certificate, if it sent one; `None` if the handshake failed (logged).
pub(crate) async fn accept(
    stream: TcpStream,
    config: Arc<ServerConfig>,
    deadline: Instant,
    peer: SocketAddr,
) -> Option<(TlsStream<TcpStream>, Option<ClientCert>)> {
    // No TLS state until the peer sends its first bytes: a peer that connects and says
    // nothing costs the task and the socket, as on the plain port.
    match tokio::time::timeout_at(deadline, stream.readable()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return None,
        Err(_) => {
            tracing::info!(peer = %peer, "TLS handshake timed out");
            return None;
        }
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer, "TLS handshake failed: {e}");
            return None;
        }
        Err(_) => {
            tracing::info!(peer = %peer, "TLS handshake timed out");
            return None;
        }
    };
    // rustls only reports certificates its verifier accepted; without `verify_peer` it asks
    // for none.
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| ClientCert::from_der(c));
    Some((tls, cert))
}

/// The subject CN of a DER certificate: every CN attribute in subject order, joined with
/// `,` as RabbitMQ's `ssl_cert_login_from = common_name` does; `None` without one.
fn common_name(der: &[u8]) -> Option<String> {
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let mut names = Vec::new();
    for rdn in &cert.tbs_certificate.subject.0 {
        for atv in rdn.0.iter() {
            if atv.oid != x509_cert::der::oid::db::rfc4519::CN {
                continue;
            }
            names.push(directory_string(&atv.value)?);
        }
    }
    (!names.is_empty()).then(|| names.join(","))
}

/// The text of a name attribute: UTF8String, PrintableString, IA5String (some old CAs),
/// TeletexString when it is ASCII or UTF-8, or BMPString (UTF-16).
fn directory_string(value: &x509_cert::der::Any) -> Option<String> {
    let bytes = value.value();
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::TeletexString => {
            std::str::from_utf8(bytes).ok().map(str::to_string)
        }
        Tag::BmpString => {
            let pairs = bytes.chunks_exact(2);
            if !pairs.remainder().is_empty() {
                return None;
            }
            let units = pairs.map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(dn: rcgen::DistinguishedName) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = dn;
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_is_read_from_the_subject() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "Ferry");
        dn.push(rcgen::DnType::CommonName, "billing-app");
        assert_eq!(
            ClientCert::from_der(&cert_with(dn)).common_name.as_deref(),
            Some("billing-app")
        );
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::CommonName,
            rcgen::DnValue::PrintableString("printable".try_into().unwrap()),
        );
        assert_eq!(common_name(&cert_with(dn)).as_deref(), Some("printable"));
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::CommonName,
            rcgen::DnValue::BmpString("bmp-ü".try_into().unwrap()),
        );
        assert_eq!(common_name(&cert_with(dn)).as_deref(), Some("bmp-ü"));
    }

    #[test]
    fn no_cn_or_garbage_gives_no_name() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "Ferry");
        assert_eq!(common_name(&cert_with(dn)), None);
        assert_eq!(common_name(b"not a certificate"), None);
        assert_eq!(common_name(&[]), None);
        let mut der = {
            let mut dn = rcgen::DistinguishedName::new();
            dn.push(rcgen::DnType::CommonName, "x");
            cert_with(dn)
        };
        // Every truncation of a real certificate must be refused, never panic.
        while der.pop().is_some() {
            assert_eq!(common_name(&der), None);
        }
    }
}
