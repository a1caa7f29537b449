//! HTTP basic authentication against the broker's users, and what their tags let them do
//! (RabbitMQ's management, policymaker, monitoring and administrator tags).

use crate::error::{ApiError, ApiResult};
use axum::http::{header, HeaderMap};
use base64::Engine;
use ferrymq_core::Broker;
use std::net::SocketAddr;

/// The authenticated user a request comes from.
#[derive(Debug, Clone)]
pub struct Caller {
    /// User name.
    pub user: String,
    /// Its tags.
    pub tags: Vec<String>,
}

impl Caller {
    fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// May use the management API at all.
    pub fn is_management(&self) -> bool {
        ["management", "policymaker", "monitoring", "administrator"]
            .iter()
            .any(|t| self.has(t))
    }

    /// Sees every vhost's objects and connections, and the node.
    pub fn is_monitor(&self) -> bool {
        self.has("monitoring") || self.has("administrator")
    }

    /// May set policies in the vhosts it can use.
    pub fn is_policymaker(&self) -> bool {
        self.has("policymaker") || self.has("administrator")
    }

    /// May manage users, vhosts, permissions and definitions.
    pub fn is_admin(&self) -> bool {
        self.has("administrator")
    }

    /// Fails unless the caller is an administrator.
    pub fn need_admin(&self) -> ApiResult<()> {
        match self.is_admin() {
            true => Ok(()),
            false => Err(ApiError::NotAuthorised("Not administrator user".into())),
        }
    }

    /// Fails unless the caller is a monitoring user (or an administrator).
    pub fn need_monitor(&self) -> ApiResult<()> {
        match self.is_monitor() {
            true => Ok(()),
            false => Err(ApiError::NotAuthorised("Not monitor user".into())),
        }
    }

    /// Fails unless the caller is a policymaker (or an administrator).
    pub fn need_policymaker(&self) -> ApiResult<()> {
        match self.is_policymaker() {
            true => Ok(()),
            false => Err(ApiError::NotAuthorised("Not policymaker user".into())),
        }
    }
}

/// Longest `Authorization` header value looked at: a peer cannot make the server decode
/// more before it is authenticated.
const MAX_AUTH_HEADER: usize = 4096;

/// Checks the request's basic credentials; the user must have a management tag.
pub fn authenticate(broker: &Broker, headers: &HeaderMap, peer: SocketAddr) -> ApiResult<Caller> {
    if headers.get(header::AUTHORIZATION).is_none() {
        return Err(ApiError::NoCredentials);
    }
    let (user, password) = basic_credentials(headers).ok_or(ApiError::LoginFailed)?;
    broker
        .authenticate(&user, &password, peer.ip().is_loopback())
        .map_err(|_| ApiError::LoginFailed)?;
    let tags = broker.user_tags(&user).ok_or(ApiError::LoginFailed)?;
    let caller = Caller { user, tags };
    if !caller.is_management() {
        return Err(ApiError::NotAuthorised("Not management user".into()));
    }
    Ok(caller)
}

/// The user and password of a `Basic` authorization header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    if v.len() > MAX_AUTH_HEADER {
        return None;
    }
    let v = std::str::from_utf8(v).ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn basic_credentials_are_decoded_and_bad_ones_refused() {
        assert_eq!(
            basic_credentials(&with("Basic Z3Vlc3Q6Z3Vlc3Q=")),
            Some(("guest".into(), "guest".into()))
        );
        // A password may contain ':'.
        assert_eq!(
            basic_credentials(&with("basic dTpwOnE=")),
            Some(("u".into(), "p:q".into()))
        );
        assert_eq!(basic_credentials(&with("Bearer abc")), None);
        assert_eq!(basic_credentials(&with("Basic !!!")), None);
        assert_eq!(basic_credentials(&with("Basic bm9jb2xvbg==")), None);
        let long = format!("Basic {}", "A".repeat(MAX_AUTH_HEADER));
        assert_eq!(basic_credentials(&with(&long)), None);
        assert_eq!(basic_credentials(&HeaderMap::new()), None);
    }
}
