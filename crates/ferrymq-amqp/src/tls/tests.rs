//! Loading and reloading certificates from PEM files made by rcgen.

use super::*;
use std::path::PathBuf;
use std::sync::Arc;

/// A CA and the files of a server certificate it signed.
struct Files {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Files {
    fn new() -> Files {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap();
        let f = Files {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        std::fs::write(f.path("ca.pem"), f.ca.pem()).unwrap();
        f.write_server("server");
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes server.pem and server.key for a new key; returns the certificate's DER.
    fn write_server(&self, cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.ca).unwrap();
        // Replaced by rename, as certificate tools do: a new inode even within one mtime tick.
        for (name, text) in [
            ("server.pem", cert.pem()),
            ("server.key", key.serialize_pem()),
        ] {
            let tmp = self.path(&format!("{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.path(name)).unwrap();
        }
        cert.der().to_vec()
    }

    fn settings(&self) -> TlsSettings {
        TlsSettings {
            certfile: self.path("server.pem"),
            keyfile: self.path("server.key"),
            cacertfile: Some(self.path("ca.pem")),
            verify_peer: false,
            fail_if_no_peer_cert: false,
        }
    }
}

fn err(s: &TlsSettings) -> String {
    server_config(s).expect_err("refused").to_string()
}

#[test]
fn a_certificate_and_its_key_load_with_or_without_client_verification() {
    let f = Files::new();
    let s = f.settings();
    server_config(&s).unwrap();
    server_config(&TlsSettings {
        verify_peer: true,
        ..s.clone()
    })
    .unwrap();
    server_config(&TlsSettings {
        verify_peer: true,
        fail_if_no_peer_cert: true,
        ..s
    })
    .unwrap();
}

#[test]
fn unusable_files_are_refused_with_the_file_named() {
    let f = Files::new();
    let s = f.settings();
    let missing = TlsSettings {
        certfile: f.path("nope.pem"),
        ..s.clone()
    };
    assert!(err(&missing).contains("nope.pem"), "{}", err(&missing));

    std::fs::write(f.path("garbage.pem"), "-----BEGIN CERTIFICATE-----\n%%%\n").unwrap();
    let garbage = TlsSettings {
        certfile: f.path("garbage.pem"),
        ..s.clone()
    };
    assert!(err(&garbage).contains("garbage.pem"), "{}", err(&garbage));
    assert!(
        err(&garbage).contains("no '-----END CERTIFICATE-----' line"),
        "{}",
        err(&garbage)
    );

    // A key file holding a certificate, and a certificate file holding a key.
    let swapped = TlsSettings {
        certfile: s.keyfile.clone(),
        keyfile: s.certfile.clone(),
        ..s.clone()
    };
    assert!(
        err(&swapped).contains("no PEM section"),
        "{}",
        err(&swapped)
    );

    // A key that is not the certificate's.
    std::fs::write(
        f.path("other.key"),
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let mismatch = TlsSettings {
        keyfile: f.path("other.key"),
        ..s.clone()
    };
    assert!(matches!(
        server_config(&mismatch),
        Err(TlsError::Identity { .. })
    ));

    let big = f.path("big.pem");
    std::fs::write(&big, vec![b'A'; MAX_PEM_FILE as usize + 1]).unwrap();
    let too_large = TlsSettings {
        certfile: big,
        ..s.clone()
    };
    assert!(matches!(
        server_config(&too_large),
        Err(TlsError::TooLarge { .. })
    ));

    let no_ca = TlsSettings {
        verify_peer: true,
        cacertfile: None,
        ..s.clone()
    };
    assert!(err(&no_ca).contains("cacertfile"));
    let empty_ca = f.path("empty.pem");
    std::fs::write(&empty_ca, "").unwrap();
    let empty = TlsSettings {
        verify_peer: true,
        cacertfile: Some(empty_ca),
        ..s
    };
    assert!(err(&empty).contains("empty.pem"));
}

fn same(a: &Arc<rustls::ServerConfig>, b: &Arc<rustls::ServerConfig>) -> bool {
    Arc::ptr_eq(a, b)
}

#[test]
fn reload_replaces_the_configuration_only_when_the_files_are_usable() {
    let f = Files::new();
    let tls = ServerTls::load(f.settings()).unwrap();
    let first = tls.current();
    assert!(tls.reload_if_changed().is_none(), "nothing changed yet");

    f.write_server("second");
    assert!(matches!(tls.reload_if_changed(), Some(Ok(()))));
    let second = tls.current();
    assert!(!same(&first, &second));
    assert!(tls.reload_if_changed().is_none());

    // A broken certificate: the reload fails, the previous configuration stays, and the
    // same broken files are not retried on every poll.
    std::fs::write(
        f.path("server.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    assert!(matches!(tls.reload_if_changed(), Some(Err(_))));
    assert!(same(&second, &tls.current()));
    assert!(tls.reload_if_changed().is_none());
    assert!(tls.reload("SIGHUP").is_err());
    assert!(same(&second, &tls.current()));

    f.write_server("third");
    assert!(matches!(tls.reload_if_changed(), Some(Ok(()))));
    assert!(!same(&second, &tls.current()));
}

#[test]
fn loading_fails_when_the_files_are_unusable_at_start() {
    let f = Files::new();
    std::fs::write(f.path("server.key"), "not a key").unwrap();
    assert!(ServerTls::load(f.settings()).is_err());
}
