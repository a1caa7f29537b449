//! AMQPS: a TLS listener beside or instead of plain AMQP, client certificates and the
//! EXTERNAL mechanism, certificate reload, and peers that do not speak TLS. Each test makes
//! its own certificates with rcgen; clients are lapin over rustls (what applications use) and
//! tokio-rustls where a test must see what the broker serves or send exact bytes.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use ferrymq::config::{Config, VerifySetting};
use ferrymq_amqp::codec::frame::{decode_frame, encode_method};
use ferrymq_amqp::codec::methods::*;
use ferrymq_amqp::codec::{Frame, LongStr, Method, PROTOCOL_HEADER};
use ferrymq_core::access::Permission;
use ferrymq_core::admin::Credential;
use ferrymq_core::FieldTable as CoreTable;
use lapin::options::*;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A test certificate authority and a directory for the files a broker reads.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A client certificate with its key.
struct ClientKey {
    cert: CertificateDer<'static>,
    key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, format!("FerryMQ test CA {name}"));
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        std::fs::write(pki.ca_file(), pki.ca.pem()).unwrap();
        pki
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Writes a server certificate for 127.0.0.1 and its key to `dir`/server.pem and
    /// `dir`/server.key, each replaced by rename as certificate tools do; returns its DER.
    fn write_server_files(&self, dir: &Path) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "ferrymq");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.ca).unwrap();
        for (name, text) in [
            ("server.pem", cert.pem()),
            ("server.key", key.serialize_pem()),
        ] {
            let tmp = dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.join(name)).unwrap();
        }
        cert.der().to_vec()
    }

    /// A client certificate whose subject CN is `cn`.
    fn client(&self, cn: &str) -> ClientKey {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.ca).unwrap().der().clone();
        ClientKey { cert, key }
    }
}

impl ClientKey {
    /// The certificate and key as PKCS#12, the form lapin takes a client identity in.
    fn pkcs12(&self) -> OwnedIdentity {
        let chain = [p12_keystore::Certificate::from_der(&self.cert).unwrap()];
        let keychain =
            p12_keystore::PrivateKeyChain::new(self.key.serialize_der(), [1u8; 4], chain);
        let mut store = p12_keystore::KeyStore::new();
        store.add_entry(
            "client",
            p12_keystore::KeyStoreEntry::PrivateKeyChain(keychain),
        );
        OwnedIdentity {
            der: store.writer("test").write().unwrap(),
            password: "test".into(),
        }
    }
}

/// Certificate and key files in `dir`, for `Config::tls`.
fn tls_files(c: &mut Config, dir: &Path) {
    c.tls.port = 0;
    c.tls.certfile = Some(dir.join("server.pem"));
    c.tls.keyfile = Some(dir.join("server.key"));
}

/// A broker with plain AMQP and AMQPS, its certificate signed by `pki`.
async fn tls_broker(pki: &Pki, f: impl FnOnce(&mut Config)) -> TestBroker {
    pki.write_server_files(pki.dir.path());
    start_with(|c| {
        tls_files(c, pki.dir.path());
        f(c)
    })
    .await
}

/// Asks for client certificates signed by `pki`'s CA; `required` refuses clients without one.
fn verify_peer(c: &mut Config, pki: &Pki, required: bool) {
    c.tls.cacertfile = Some(pki.ca_file());
    c.tls.verify = VerifySetting::VerifyPeer;
    c.tls.fail_if_no_peer_cert = required;
}

fn tls_addr(b: &TestBroker) -> SocketAddr {
    b.tls_addr.expect("the broker has an AMQPS listener")
}

/// Connects lapin over TLS to 127.0.0.1, trusting `ca`; `query` is appended to the URI
/// (`?auth_mechanism=external`).
async fn lapin_tls(
    addr: SocketAddr,
    ca: &Pki,
    identity: Option<OwnedIdentity>,
    query: &str,
) -> lapin::Result<Connection> {
    let uri = format!("amqps://guest:guest@127.0.0.1:{}/%2f{query}", addr.port());
    let tls = OwnedTLSConfig {
        identity,
        cert_chain: Some(ca.ca.pem()),
    };
    tokio::time::timeout(
        WAIT,
        Connection::connect_with_config(&uri, ConnectionProperties::default(), tls),
    )
    .await
    .expect("lapin connects or fails within the wait limit")
}

/// A tokio-rustls client configuration trusting the CAs of `trusted`.
fn client_config(trusted: &[&Pki], cert: Option<&ClientKey>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for p in trusted {
        roots.add(p.ca.der().clone()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match cert {
        None => b.with_no_client_auth(),
        Some(c) => b
            .with_client_auth_cert(
                vec![c.cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.serialize_der())),
            )
            .unwrap(),
    })
}

/// Opens a TLS session to the broker with tokio-rustls.
async fn raw_tls(
    addr: SocketAddr,
    trusted: &[&Pki],
    cert: Option<&ClientKey>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(client_config(trusted, cert)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake ends within the wait limit")
}

/// The end-entity certificate the broker serves to a new connection.
async fn served_certificate(addr: SocketAddr, trusted: &[&Pki]) -> Vec<u8> {
    let tls = raw_tls(addr, trusted, None).await.expect("TLS handshake");
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certificate");
    chain[0].to_vec()
}

/// Reads until the next method frame; None when the broker closes the stream.
async fn next_method<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Option<Method> {
    loop {
        match decode_frame(buf, 0).expect("the broker sends valid frames") {
            Some(Frame::Method { method, .. }) => return Some(method),
            Some(_) => continue,
            None => {}
        }
        let n = tokio::time::timeout(WAIT, s.read_buf(buf))
            .await
            .expect("the broker answers within the wait limit")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
    }
}

/// Sends the protocol header and returns the mechanisms connection.start offers.
async fn offered_mechanisms<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
) -> String {
    s.write_all(PROTOCOL_HEADER).await.unwrap();
    match next_method(s, buf).await {
        Some(Method::ConnectionStart(start)) => {
            String::from_utf8_lossy(&start.mechanisms.0).into_owned()
        }
        other => panic!("expected connection.start, got {other:?}"),
    }
}

/// Sends connection.start-ok with EXTERNAL and returns the broker's connection.close.
async fn try_external<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
) -> ConnectionClose {
    let mut out = BytesMut::new();
    encode_method(
        &mut out,
        0,
        &ConnectionStartOk {
            client_properties: CoreTable::new(),
            mechanism: "EXTERNAL".into(),
            response: LongStr(Bytes::new()),
            locale: "en_US".into(),
        }
        .into(),
    );
    s.write_all(&out).await.unwrap();
    s.flush().await.unwrap();
    match next_method(s, buf).await {
        Some(Method::ConnectionClose(c)) => c,
        other => panic!("expected connection.close, got {other:?}"),
    }
}

/// Waits until the broker closes `s` (EOF or a reset); panics after [`WAIT`].
async fn closed_by_broker<S: AsyncRead + Unpin>(s: &mut S) {
    let mut scratch = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut scratch)).await {
            Err(_) => panic!("the broker did not close the connection"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

/// Publishes `body` to a fresh queue `q` on `c` and reads it back: the connection works.
async fn round_trip(c: &Connection, q: &str, body: &[u8]) {
    let ch = c.create_channel().await.expect("channel opens");
    queue(&ch, q).await;
    publish(&ch, "", q, body).await;
    let m = get(&ch, q).await.expect("the message is there");
    assert_eq!(m.delivery.data, body);
    ch.close(200, "done").await.expect("channel closes");
}

#[tokio::test]
async fn plain_and_tls_clients_share_one_broker() {
    let pki = Pki::new("a");
    let b = tls_broker(&pki, |_| {}).await;
    assert_ne!(b.addr, tls_addr(&b));

    let (_plain, plain_ch) = channel(&b).await;
    // Confirms: a publish has been routed when `publish` returns.
    plain_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    queue(&plain_ch, "shared").await;
    publish(&plain_ch, "", "shared", b"over tcp").await;

    let tls = lapin_tls(tls_addr(&b), &pki, None, "")
        .await
        .expect("lapin connects over TLS");
    let tls_ch = tls.create_channel().await.unwrap();
    tls_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let m = get(&tls_ch, "shared").await.expect("message from TCP");
    assert_eq!(m.delivery.data, b"over tcp");
    // Larger than one TLS record (16 KiB) and than one AMQP frame.
    let big = vec![7u8; 300_000];
    publish(&tls_ch, "", "shared", &big).await;
    let m = get(&plain_ch, "shared").await.expect("message from TLS");
    assert_eq!(m.delivery.data, big);

    tls.close(200, "bye").await.unwrap();
    b.stop().await;
}

#[tokio::test]
async fn a_tls_only_broker_refuses_plain_amqp() {
    let pki = Pki::new("a");
    let b = tls_broker(&pki, |c| c.plain_listener = false).await;
    assert_eq!(b.running.as_ref().unwrap().amqp_addr, None);

    // Plain AMQP to the only port: the protocol header is not a TLS ClientHello.
    let uri = format!("amqp://guest:guest@{}/%2f", tls_addr(&b));
    let plain = tokio::time::timeout(
        WAIT,
        Connection::connect(&uri, ConnectionProperties::default()),
    )
    .await
    .expect("refused within the wait limit");
    assert!(plain.is_err(), "plain AMQP must not get through");

    let tls = lapin_tls(tls_addr(&b), &pki, None, "").await.unwrap();
    round_trip(&tls, "tls-only", b"secure").await;
    b.stop().await;
}

fn billing_permission() -> Permission {
    Permission {
        configure: "^billing\\.".into(),
        write: ".*".into(),
        read: ".*".into(),
    }
}

#[tokio::test]
async fn a_client_certificate_with_external_logs_in_as_the_cn_user() {
    let pki = Pki::new("a");
    let b = tls_broker(&pki, |c| verify_peer(c, &pki, false)).await;
    // A user without a password: it can only log in with its certificate.
    b.broker()
        .put_user("billing-app", Credential::None, &[])
        .unwrap();
    b.broker()
        .set_permissions("billing-app", "/", billing_permission())
        .unwrap();

    let cert = pki.client("billing-app");
    let c = lapin_tls(
        tls_addr(&b),
        &pki,
        Some(cert.pkcs12()),
        "?auth_mechanism=external",
    )
    .await
    .expect("EXTERNAL login with the client certificate");
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "billing.jobs").await;
    publish(&ch, "", "billing.jobs", b"invoice").await;
    assert_eq!(
        get(&ch, "billing.jobs").await.unwrap().delivery.data,
        b"invoice"
    );
    // The vhost permissions of the CN user apply.
    let e = ch
        .queue_declare(
            "other",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(403));
    assert!(
        text(&e).contains("refused for user 'billing-app'"),
        "{}",
        text(&e)
    );
    c.close(200, "bye").await.ok();

    // The certificate does not force EXTERNAL: PLAIN still works on the same connection kind.
    let plain_login = lapin_tls(tls_addr(&b), &pki, Some(cert.pkcs12()), "")
        .await
        .expect("PLAIN login as guest with a client certificate");
    round_trip(&plain_login, "plain-over-tls", b"x").await;
    b.stop().await;
}

#[tokio::test]
async fn external_is_refused_without_a_certificate_or_for_an_unknown_user() {
    let pki = Pki::new("a");
    let b = tls_broker(&pki, |c| {
        verify_peer(c, &pki, false);
        // lapin waits for the broker to hang up after refusing a mechanism itself.
        c.handshake_timeout = 2;
    })
    .await;
    b.broker()
        .put_user("billing-app", Credential::None, &[])
        .unwrap();
    b.broker()
        .set_permissions("billing-app", "/", billing_permission())
        .unwrap();

    // No certificate: EXTERNAL is not offered, and a client that uses it anyway is refused.
    let mut buf = BytesMut::new();
    let mut s = raw_tls(tls_addr(&b), &[&pki], None).await.unwrap();
    assert_eq!(offered_mechanisms(&mut s, &mut buf).await, "PLAIN AMQPLAIN");
    let close = try_external(&mut s, &mut buf).await;
    assert_eq!(close.reply_code, 503);
    assert_eq!(
        close.reply_text.as_str(),
        "COMMAND_INVALID - invalid authentication mechanism 'EXTERNAL'"
    );
    // lapin does not even try a mechanism the broker does not offer.
    assert!(
        lapin_tls(tls_addr(&b), &pki, None, "?auth_mechanism=external")
            .await
            .is_err()
    );

    // With a verified certificate it is offered.
    let mut buf = BytesMut::new();
    let cert = pki.client("billing-app");
    let mut s = raw_tls(tls_addr(&b), &[&pki], Some(&cert)).await.unwrap();
    assert_eq!(
        offered_mechanisms(&mut s, &mut buf).await,
        "PLAIN AMQPLAIN EXTERNAL"
    );

    // Never on the plain port.
    let mut buf = BytesMut::new();
    let mut tcp = TcpStream::connect(b.addr).await.unwrap();
    assert_eq!(
        offered_mechanisms(&mut tcp, &mut buf).await,
        "PLAIN AMQPLAIN"
    );
    assert_eq!(try_external(&mut tcp, &mut buf).await.reply_code, 503);

    // A valid certificate whose CN is not a user.
    let e = lapin_tls(
        tls_addr(&b),
        &pki,
        Some(pki.client("nobody").pkcs12()),
        "?auth_mechanism=external",
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), Some(403), "{e}");
    assert_eq!(
        text(&e),
        "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile."
    );
    b.stop().await;
}

#[tokio::test]
async fn bad_or_missing_client_certificates_are_refused_when_required() {
    let pki = Pki::new("a");
    let rogue = Pki::new("rogue");
    let b = tls_broker(&pki, |c| verify_peer(c, &pki, true)).await;
    b.broker()
        .put_user("billing-app", Credential::None, &[])
        .unwrap();
    b.broker()
        .set_permissions("billing-app", "/", billing_permission())
        .unwrap();

    // Same CN, signed by a CA the broker does not trust.
    let forged = rogue.client("billing-app").pkcs12();
    assert!(
        lapin_tls(tls_addr(&b), &pki, Some(forged), "?auth_mechanism=external")
            .await
            .is_err(),
        "a certificate from an untrusted CA must be refused"
    );
    // No certificate at all, with fail_if_no_peer_cert.
    assert!(lapin_tls(tls_addr(&b), &pki, None, "").await.is_err());
    let refused = raw_tls(tls_addr(&b), &[&pki], None).await;
    if let Ok(mut s) = refused {
        // TLS 1.3 clients finish their side before the server's alert arrives.
        let mut buf = BytesMut::new();
        let _ = s.write_all(PROTOCOL_HEADER).await;
        assert!(next_method(&mut s, &mut buf).await.is_none());
    }

    // The broker still serves the right certificate.
    let ok = lapin_tls(
        tls_addr(&b),
        &pki,
        Some(pki.client("billing-app").pkcs12()),
        "?auth_mechanism=external",
    )
    .await
    .expect("a certificate from the trusted CA");
    ok.close(200, "bye").await.ok();
    b.stop().await;
}

#[tokio::test]
async fn a_reloaded_certificate_goes_to_new_connections_while_old_ones_keep_working() {
    let (first, second) = (Pki::new("first"), Pki::new("second"));
    // The broker's files live in `first`'s directory; `second` signs the replacement.
    let dir = first.dir.path();
    let der1 = first.write_server_files(dir);
    let b = start_with(|c| {
        tls_files(c, dir);
        c.tls.reload_interval = 1;
    })
    .await;
    let addr = tls_addr(&b);
    assert_eq!(served_certificate(addr, &[&first, &second]).await, der1);
    let old = lapin_tls(addr, &first, None, "").await.unwrap();
    let old_ch = old.create_channel().await.unwrap();
    queue(&old_ch, "kept").await;

    // New files: picked up by the file watcher, no signal, no restart.
    let der2 = second.write_server_files(dir);
    let deadline = tokio::time::Instant::now() + WAIT;
    while served_certificate(addr, &[&first, &second]).await != der2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let new = lapin_tls(addr, &second, None, "")
        .await
        .expect("a client trusting only the new CA connects");
    round_trip(&new, "after-reload", b"new").await;
    // The connection made before the reload still works.
    publish(&old_ch, "", "kept", b"old").await;
    assert_eq!(get(&old_ch, "kept").await.unwrap().delivery.data, b"old");

    // A broken certificate file: the reload fails and the last good certificate stays.
    std::fs::write(
        dir.join("server.pem"),
        "-----BEGIN CERTIFICATE-----\nnope\n",
    )
    .unwrap();
    let r = b.running.as_ref().unwrap().reload_tls("test");
    assert!(matches!(r, Some(Err(_))), "{r:?}");
    assert_eq!(served_certificate(addr, &[&first, &second]).await, der2);
    let again = lapin_tls(addr, &second, None, "").await.unwrap();
    round_trip(&again, "after-failed-reload", b"still").await;
    b.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_of_a_running_server() {
    let (first, second) = (Pki::new("first"), Pki::new("second"));
    let dir = first.dir.path();
    let der1 = first.write_server_files(dir);
    // File polling off: only the signal can make the broker reload.
    let config = dir.join("ferrymq.toml");
    std::fs::write(&config, "[tls]\nreload_interval = 0\n").unwrap();
    let data = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let p = ServerProcess::start(
        data.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--tls-port",
            "0",
            "--tls-certfile",
            cert.to_str().unwrap(),
            "--tls-keyfile",
            key.to_str().unwrap(),
        ],
    );
    let addr: SocketAddr = p.tls_addr.as_ref().unwrap().parse().unwrap();
    assert_eq!(served_certificate(addr, &[&first, &second]).await, der1);

    let der2 = second.write_server_files(dir);
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &p.pid().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -HUP");
    let deadline = tokio::time::Instant::now() + WAIT;
    while served_certificate(addr, &[&first, &second]).await != der2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // SIGHUP did not stop the broker: both listeners still serve.
    let c = lapin_tls(addr, &second, None, "").await.unwrap();
    round_trip(&c, "after-sighup", b"hup").await;
    let plain = Connection::connect(&p.uri(), ConnectionProperties::default())
        .await
        .unwrap();
    round_trip(&plain, "plain-after-sighup", b"hup").await;
    p.sigterm();
    assert!(p.wait().success());
}

#[tokio::test]
async fn peers_that_do_not_speak_tls_are_closed_without_harming_other_clients() {
    let pki = Pki::new("a");
    // A short handshake timeout, so that stalled peers are closed soon.
    let b = tls_broker(&pki, |c| c.handshake_timeout = 2).await;
    let addr = tls_addr(&b);
    let good = lapin_tls(addr, &pki, None, "").await.unwrap();
    let good_ch = good.create_channel().await.unwrap();
    queue(&good_ch, "unharmed").await;

    // Plain AMQP's protocol header instead of a ClientHello.
    let mut amqp = TcpStream::connect(addr).await.unwrap();
    amqp.write_all(PROTOCOL_HEADER).await.unwrap();
    // Random bytes.
    let mut noise = TcpStream::connect(addr).await.unwrap();
    let junk: Vec<u8> = (0..65_536u32).map(|i| (i * 7919 % 251) as u8).collect();
    let _ = noise.write_all(&junk).await;
    // A TLS record header announcing a 16 KiB handshake record, then nothing.
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc])
        .await
        .unwrap();
    // A record larger than TLS allows.
    let mut oversized = TcpStream::connect(addr).await.unwrap();
    oversized
        .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff])
        .await
        .unwrap();
    // Connects and says nothing.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Completes TLS, then never sends the AMQP header: the TLS handshake does not restart
    // the handshake clock.
    let mut mute_tls = raw_tls(addr, &[&pki], None).await.unwrap();

    closed_by_broker(&mut amqp).await;
    closed_by_broker(&mut noise).await;
    closed_by_broker(&mut oversized).await;
    closed_by_broker(&mut partial).await;
    closed_by_broker(&mut silent).await;
    closed_by_broker(&mut mute_tls).await;

    // The client that was there all along still works, and new ones get in.
    publish(&good_ch, "", "unharmed", b"fine").await;
    assert_eq!(
        get(&good_ch, "unharmed").await.unwrap().delivery.data,
        b"fine"
    );
    let later = lapin_tls(addr, &pki, None, "").await.unwrap();
    round_trip(&later, "later", b"ok").await;
    b.stop().await;
}

#[derive(clap::Parser)]
struct PerfCli {
    #[command(flatten)]
    args: ferrymq::perf::ThroughputArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_perf_tool_loads_a_broker_over_amqps() {
    use clap::Parser;
    let pki = Pki::new("a");
    let b = tls_broker(&pki, |_| {}).await;
    let uri = format!("amqps://guest:guest@127.0.0.1:{}/%2f", tls_addr(&b).port());
    let ca = pki.ca_file();
    let args = |extra: &[&str]| {
        let mut v = vec!["perf", "--uri", uri.as_str(), "--quiet", "--time", "60"];
        v.extend_from_slice(extra);
        PerfCli::try_parse_from(v).expect("valid arguments").args
    };
    let counted = [
        "--cacert",
        ca.to_str().unwrap(),
        "--pmessages",
        "3000",
        "--confirm",
        "100",
        "--ack-every",
        "10",
    ];
    let r = ferrymq::perf::run_throughput(&args(&counted), false)
        .await
        .expect("a run over TLS");
    assert_eq!((r.published, r.confirmed, r.consumed), (3000, 3000, 3000));
    // amqps:// without the CA to trust is refused up front.
    let e = ferrymq::perf::run_throughput(&args(&["--pmessages", "1"]), false)
        .await
        .expect_err("no --cacert");
    assert!(e.to_string().contains("--cacert"), "{e}");
    b.stop().await;
}
