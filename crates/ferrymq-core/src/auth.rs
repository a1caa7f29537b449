//! Users and password checks.
//!
//! Passwords are stored as RabbitMQ stores them (`rabbit_password_hashing_sha256`):
//! base64(salt ++ sha256(salt ++ password)) with a 4-byte salt, so definitions can move between
//! RabbitMQ and FerryMQ later.

use crate::limits::UserLimits;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A broker user.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Salted SHA-256 password hash, base64 encoded.
    pub password_hash: String,
    /// Tags such as `administrator`, `monitoring`, `policymaker`, `management`.
    pub tags: Vec<String>,
    /// Connection and channel limits.
    pub limits: UserLimits,
}

impl User {
    /// A user with a freshly salted hash of `password`.
    pub fn new(name: &str, password: &str, tags: &[&str]) -> Self {
        let mut salt = [0u8; 4];
        rand::thread_rng().fill_bytes(&mut salt);
        User {
            name: name.to_string(),
            password_hash: hash_password(&salt, password),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            limits: UserLimits::default(),
        }
    }

    /// A user with a stored hash (from a definitions file).
    pub fn with_hash(name: &str, password_hash: &str, tags: Vec<String>) -> Self {
        User {
            name: name.to_string(),
            password_hash: password_hash.to_string(),
            tags,
            limits: UserLimits::default(),
        }
    }

    /// Whether `password` matches the stored hash.
    pub fn check_password(&self, password: &str) -> bool {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&self.password_hash) else {
            return false;
        };
        if raw.len() != 36 {
            return false;
        }
        let expected = hash_password(&raw[..4], password);
        // Constant-time comparison is not needed for a salted hash compare of equal length,
        // but keep it simple and branch-free anyway.
        expected
            .bytes()
            .zip(self.password_hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
            && expected.len() == self.password_hash.len()
    }
}

fn hash_password(salt: &[u8], password: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_roundtrip() {
        let u = User::new("guest", "guest", &["administrator"]);
        assert!(u.check_password("guest"));
        assert!(!u.check_password("guesT"));
        assert!(!u.check_password(""));
    }
}
