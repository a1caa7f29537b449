//! Runtime administration: users, vhosts, permissions, topic permissions, policies and
//! limits, changed on a running broker and kept in the definitions file. The management
//! HTTP API, `ferrymq ctl` and `--load-definitions` all call these methods.
//!
//! Every change is saved first and applied after, so a failed save changes nothing, and
//! live sessions see it at their next operation (they recompile their permissions when the
//! access generation moves).

use crate::access::{compile_pattern, Permission, TopicPermission};
use crate::auth::User;
use crate::broker::{Broker, Identity};
use crate::error::{CoreError, CoreResult};
use crate::limits::{UserLimits, VHostLimits};
use crate::policy::Policy;
use crate::vhost::VHost;
use ferrymq_store::def_state::Change;
use ferrymq_store::definitions::{self as defs, Definitions};
use ferrymq_store::Pending;
use std::sync::Arc;

mod import;

/// How a user's password is given.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A clear-text password, hashed before it is stored.
    Password(String),
    /// A hash in RabbitMQ's `rabbit_password_hashing_sha256` format.
    Hash(String),
    /// No password: the user cannot log in with PLAIN/AMQPLAIN.
    None,
}

/// A user's permissions on one vhost, as listed by [`Broker::permissions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionEntry {
    /// User name.
    pub user: String,
    /// Vhost name.
    pub vhost: String,
    /// The regexes.
    pub permission: Permission,
}

fn unknown_user(name: &str) -> CoreError {
    CoreError::NotFound(format!("no user '{name}'"))
}

fn unknown_vhost(name: &str) -> CoreError {
    CoreError::NotFound(format!("no vhost '{name}'"))
}

fn check_patterns(patterns: &[&str]) -> CoreResult<()> {
    for p in patterns {
        compile_pattern(p)?;
    }
    Ok(())
}

/// Variables are expanded per session; checks that the rest of each pattern compiles.
fn check_topic_patterns(p: &TopicPermission) -> CoreResult<()> {
    let plain = |s: &str| s.replace("{username}", "u").replace("{vhost}", "v");
    check_patterns(&[&plain(&p.write), &plain(&p.read)])
}

impl Broker {
    /// Changes users, permissions or limits: `f` edits a copy, which is saved and then put
    /// in place. Serialised by the identity write lock being taken last, after the save.
    fn change_identity<T>(&self, f: impl FnOnce(&mut Identity) -> CoreResult<T>) -> CoreResult<T> {
        let _g = self.admin.lock();
        let mut next = self.identity.read().clone();
        let out = f(&mut next)?;
        if let Some(p) = &self.persist {
            let vhosts = self.vhost_names();
            p.commit_and_wait(&[identity_change(&next, &vhosts)])?;
        }
        let mut cur = self.identity.write();
        // Sessions recompile only when what they compiled changed (not for a password, tag
        // or limit change).
        let grants_changed =
            cur.permissions != next.permissions || cur.topic_permissions != next.topic_permissions;
        *cur = next;
        drop(cur);
        if grants_changed {
            self.bump_access();
        }
        Ok(out)
    }

    fn vhost_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.vhosts.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Adds a user or replaces one (password and tags; its limits are kept).
    pub fn put_user(&self, name: &str, credential: Credential, tags: &[&str]) -> CoreResult<()> {
        if name.is_empty() {
            return Err(CoreError::InvalidArgument(
                "user name must not be empty".into(),
            ));
        }
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        self.change_identity(|id| {
            let limits = id.users.get(name).map(|u| u.limits).unwrap_or_default();
            let mut u = match credential {
                Credential::Password(p) => User::new(name, &p, &[]),
                Credential::Hash(h) => User::with_hash(name, &h, Vec::new()),
                Credential::None => User::with_hash(name, "", Vec::new()),
            };
            u.tags = tags;
            u.limits = limits;
            id.users.insert(name.to_string(), u);
            Ok(())
        })
    }

    /// Deletes a user with its permissions; its open connections are closed.
    pub fn delete_user(&self, name: &str) -> CoreResult<()> {
        self.change_identity(|id| {
            id.users.remove(name).ok_or_else(|| unknown_user(name))?;
            id.permissions.retain(|(u, _), _| u != name);
            id.topic_permissions.retain(|(u, _), _| u != name);
            Ok(())
        })?;
        self.close_connections(|c| c.user == name, &format!("user '{name}' is deleted"));
        Ok(())
    }

    /// Every user.
    pub fn users(&self) -> Vec<User> {
        let mut v: Vec<User> = self.identity.read().users.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Sets a user's permissions on a vhost (both must exist; the regexes must compile).
    pub fn set_permissions(&self, user: &str, vhost: &str, p: Permission) -> CoreResult<()> {
        check_patterns(&[&p.configure, &p.write, &p.read])?;
        self.vhost(vhost).ok_or_else(|| unknown_vhost(vhost))?;
        self.change_identity(|id| {
            if !id.users.contains_key(user) {
                return Err(unknown_user(user));
            }
            // Checked again under the admin lock, so a grant cannot outlive its vhost.
            self.vhost(vhost).ok_or_else(|| unknown_vhost(vhost))?;
            id.permissions
                .insert((user.to_string(), vhost.to_string()), p);
            Ok(())
        })
    }

    /// Removes a user's permissions on a vhost: its sessions there can do nothing more.
    pub fn clear_permissions(&self, user: &str, vhost: &str) -> CoreResult<()> {
        self.change_identity(|id| {
            id.permissions
                .remove(&(user.to_string(), vhost.to_string()))
                .map(|_| ())
                .ok_or_else(|| {
                    CoreError::NotFound(format!(
                        "no permissions for user '{user}' in vhost '{vhost}'"
                    ))
                })
        })
    }

    /// Every user's permissions, sorted by user then vhost.
    pub fn permissions(&self) -> Vec<PermissionEntry> {
        let mut v: Vec<PermissionEntry> = self
            .identity
            .read()
            .permissions
            .iter()
            .map(|((u, vh), p)| PermissionEntry {
                user: u.clone(),
                vhost: vh.clone(),
                permission: p.clone(),
            })
            .collect();
        v.sort_by(|a, b| (&a.user, &a.vhost).cmp(&(&b.user, &b.vhost)));
        v
    }

    /// Sets a user's topic permissions on one exchange of a vhost.
    pub fn set_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
        p: TopicPermission,
    ) -> CoreResult<()> {
        check_topic_patterns(&p)?;
        self.vhost(vhost).ok_or_else(|| unknown_vhost(vhost))?;
        self.change_identity(|id| {
            if !id.users.contains_key(user) {
                return Err(unknown_user(user));
            }
            self.vhost(vhost).ok_or_else(|| unknown_vhost(vhost))?;
            let list = id
                .topic_permissions
                .entry((user.to_string(), vhost.to_string()))
                .or_default();
            list.retain(|t| t.exchange != p.exchange);
            list.push(p);
            Ok(())
        })
    }

    /// Removes a user's topic permissions on a vhost: on one exchange, or all of them.
    pub fn clear_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> CoreResult<()> {
        self.change_identity(|id| {
            let key = (user.to_string(), vhost.to_string());
            match exchange {
                None => {
                    id.topic_permissions.remove(&key);
                }
                Some(x) => {
                    if let Some(list) = id.topic_permissions.get_mut(&key) {
                        list.retain(|t| t.exchange != x);
                        if list.is_empty() {
                            id.topic_permissions.remove(&key);
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// A user's topic permissions on a vhost.
    pub fn topic_permissions(&self, user: &str, vhost: &str) -> Vec<TopicPermission> {
        self.identity
            .read()
            .topic_permissions
            .get(&(user.to_string(), vhost.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Sets (replaces) a user's limits.
    pub fn set_user_limits(&self, user: &str, limits: UserLimits) -> CoreResult<()> {
        self.change_identity(|id| {
            let u = id.users.get_mut(user).ok_or_else(|| unknown_user(user))?;
            u.limits = limits;
            Ok(())
        })
    }

    /// Sets (replaces) a vhost's limits; an empty set clears them.
    pub fn set_vhost_limits(&self, vhost: &str, limits: VHostLimits) -> CoreResult<()> {
        self.vhost(vhost).ok_or_else(|| unknown_vhost(vhost))?;
        self.change_identity(|id| {
            if limits.is_empty() {
                id.vhost_limits.remove(vhost);
            } else {
                id.vhost_limits.insert(vhost.to_string(), limits);
            }
            Ok(())
        })
    }

    /// A vhost's limits.
    pub fn vhost_limits(&self, vhost: &str) -> VHostLimits {
        self.identity
            .read()
            .vhost_limits
            .get(vhost)
            .copied()
            .unwrap_or_default()
    }

    /// Adds a vhost (no-op if it exists) and returns it.
    pub fn add_vhost(&self, name: &str) -> CoreResult<Arc<VHost>> {
        if name.is_empty() {
            return Err(CoreError::InvalidArgument(
                "vhost name must not be empty".into(),
            ));
        }
        let _g = self.admin.lock();
        if let Some(v) = self.vhost(name) {
            return Ok(v);
        }
        if let Some(p) = &self.persist {
            let mut names = self.vhost_names();
            names.push(name.to_string());
            names.sort();
            let id = self.identity.read().clone();
            p.commit_and_wait(&[identity_change(&id, &names)])?;
        }
        Ok(self.insert_vhost(name))
    }

    /// Deletes a vhost and everything in it: its connections are closed, its queues with
    /// their messages and files, exchanges, bindings, policies, permissions and limits go.
    pub fn delete_vhost(&self, name: &str) -> CoreResult<()> {
        let v = {
            let _g = self.admin.lock();
            let v = self.vhost(name).ok_or_else(|| unknown_vhost(name))?;
            // No declaration or policy may be saved for the vhost from here on: its
            // definitions are about to go.
            v.mark_deleted();
            let mut next = self.identity.read().clone();
            next.permissions.retain(|(_, vh), _| vh != name);
            next.topic_permissions.retain(|(_, vh), _| vh != name);
            next.vhost_limits.remove(name);
            if let Some(p) = &self.persist {
                let names: Vec<String> = self
                    .vhost_names()
                    .into_iter()
                    .filter(|n| n != name)
                    .collect();
                let saved = p.commit_and_wait(&[
                    identity_change(&next, &names),
                    Change::VHostDeleted { name: name.into() },
                ]);
                if let Err(e) = saved {
                    v.unmark_deleted();
                    return Err(e);
                }
            }
            {
                // Out of the broker and into the deleted vhosts' counters in one step: a
                // scrape holds `gone_queues` while it walks the vhosts (Broker::walk_queues).
                let mut gone = self.gone_queues.lock();
                self.vhosts.write().remove(name);
                gone.add(&v.retire_all());
            }
            *self.identity.write() = next;
            self.bump_access();
            v
        };
        self.close_connections(|c| c.vhost == name, &format!("vhost '{name}' is deleted"));
        self.connections.lock().forget_vhost(name);
        v.destroy();
        Ok(())
    }

    /// Adds or replaces a policy on a vhost and applies it at once.
    pub fn set_policy(&self, vhost: &str, p: Policy) -> CoreResult<()> {
        let saved = self
            .vhost(vhost)
            .ok_or_else(|| unknown_vhost(vhost))?
            .set_policy(p)?;
        self.wait_saved(&saved)
    }

    /// Removes a policy from a vhost.
    pub fn clear_policy(&self, vhost: &str, name: &str) -> CoreResult<()> {
        let saved = self
            .vhost(vhost)
            .ok_or_else(|| unknown_vhost(vhost))?
            .clear_policy(name)?;
        self.wait_saved(&saved)
    }

    /// Blocks until a definitions change is durable (group commit), for administration
    /// calls, which answer only once their change is on disk.
    pub fn wait_saved(&self, saved: &Pending) -> CoreResult<()> {
        match &self.persist {
            Some(p) if !saved.is_empty() => p.wait(saved),
            _ => Ok(()),
        }
    }

    /// The definitions in RabbitMQ's format, as `rabbitmqctl export_definitions` writes
    /// them: users, vhosts, permissions, limits, policies and the durable exchanges,
    /// queues and bindings.
    pub fn export_definitions(&self) -> Definitions {
        match &self.persist {
            Some(p) => p.definitions().exported(),
            None => self.identity_definitions(),
        }
    }

    /// Asks every connection matching `which` to close with `reason`.
    pub fn close_connections(
        &self,
        which: impl Fn(&crate::connections::ConnectionInfo) -> bool,
        reason: &str,
    ) {
        for c in self.connections() {
            if which(&c) {
                c.close(reason);
            }
        }
    }
}

/// Restores users, vhosts, permissions, topic permissions and limits at start.
pub(crate) fn load_identity(b: &Broker, d: &Definitions) -> CoreResult<()> {
    for v in &d.vhosts {
        b.insert_vhost(&v.name);
    }
    let mut id = b.identity.write();
    load_identity_into(&mut id, d)
}

fn load_identity_into(id: &mut Identity, d: &Definitions) -> CoreResult<()> {
    for u in &d.users {
        let mut user = match &u.password {
            Some(p) if u.password_hash.is_empty() => User::new(&u.name, p, &[]),
            _ => User::with_hash(&u.name, &u.password_hash, Vec::new()),
        };
        user.tags = u.tags.clone();
        user.limits = UserLimits::from_json(&u.limits)
            .map_err(|e| CoreError::InvalidArgument(format!("user '{}': {e}", u.name)))?;
        id.users.insert(u.name.clone(), user);
    }
    for p in &d.permissions {
        id.permissions.insert(
            (p.user.clone(), p.vhost.clone()),
            Permission {
                configure: p.configure.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            },
        );
    }
    for t in &d.topic_permissions {
        let list = id
            .topic_permissions
            .entry((t.user.clone(), t.vhost.clone()))
            .or_default();
        list.retain(|x| x.exchange != t.exchange);
        list.push(TopicPermission {
            exchange: t.exchange.clone(),
            write: t.write.clone(),
            read: t.read.clone(),
        });
    }
    for v in &d.vhosts {
        if let Some(l) = d.vhost_limits(&v.name) {
            let limits = VHostLimits::from_json(l)
                .map_err(|e| CoreError::InvalidArgument(format!("vhost '{}': {e}", v.name)))?;
            id.vhost_limits.insert(v.name.clone(), limits);
        }
    }
    Ok(())
}

/// The journal change that records `id` with `vhosts` as the whole identity part.
fn identity_change(id: &Identity, vhosts: &[String]) -> Change {
    let mut d = Definitions::default();
    write_identity_parts(id, vhosts, &mut d);
    Change::identity_of(&d)
}

/// Writes users, vhosts, permissions, topic permissions and limits into `d`.
pub(crate) fn write_identity(b: &Broker, d: &mut Definitions) {
    let id = b.identity.read();
    write_identity_parts(&id, &b.vhost_names(), d);
}

fn write_identity_parts(id: &Identity, vhosts: &[String], d: &mut Definitions) {
    d.users = id
        .users
        .values()
        .map(|u| defs::User {
            name: u.name.clone(),
            password_hash: u.password_hash.clone(),
            hashing_algorithm: "rabbit_password_hashing_sha256".into(),
            tags: u.tags.clone(),
            password: None,
            limits: u.limits.to_json(),
        })
        .collect();
    d.users.sort_by(|a, b| a.name.cmp(&b.name));
    d.vhosts = vhosts
        .iter()
        .map(|n| defs::VHostDef { name: n.clone() })
        .collect();
    d.permissions = id
        .permissions
        .iter()
        .map(|((user, vhost), p)| defs::Permission {
            user: user.clone(),
            vhost: vhost.clone(),
            configure: p.configure.clone(),
            write: p.write.clone(),
            read: p.read.clone(),
        })
        .collect();
    d.permissions
        .sort_by(|a, b| (&a.user, &a.vhost).cmp(&(&b.user, &b.vhost)));
    d.topic_permissions = id
        .topic_permissions
        .iter()
        .flat_map(|((user, vhost), list)| {
            list.iter().map(move |t| defs::TopicPermission {
                user: user.clone(),
                vhost: vhost.clone(),
                exchange: t.exchange.clone(),
                write: t.write.clone(),
                read: t.read.clone(),
            })
        })
        .collect();
    d.topic_permissions
        .sort_by(|a, b| (&a.user, &a.vhost, &a.exchange).cmp(&(&b.user, &b.vhost, &b.exchange)));
    for v in vhosts {
        let l = id.vhost_limits.get(v).filter(|l| !l.is_empty());
        d.set_vhost_limits(v, l.map(VHostLimits::to_json));
    }
    // Limits of vhosts that no longer exist.
    let known = |v: &str| vhosts.iter().any(|n| n == v);
    d.parameters.retain(|p| {
        p.get("component").and_then(|c| c.as_str()) != Some(defs::VHOST_LIMITS)
            || p.get("vhost").and_then(|v| v.as_str()).is_some_and(known)
    });
}
