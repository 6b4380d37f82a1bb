//! Which principal opened which MCP session. rmcp keys sessions by id only; this registry binds
//! each id to the principal that created it, so a session id presented with another principal's
//! token is treated as unknown (404), and it enforces the session caps and the idle TTL.
//! A session id is never authentication: every request is verified by its own bearer token
//! before the registry is consulted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chiron_core::PrincipalId;

/// Result of looking a session id up for a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCheck {
    /// The session belongs to this principal (and was marked used).
    Owned,
    /// The session belongs to someone else.
    Foreign,
    /// No such session is known here.
    Unknown,
}

/// Why a new session may not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionLimit {
    /// The principal already has the maximum number of open sessions.
    #[error("too many open MCP sessions for this principal (limit {0}); close unused clients or wait for idle sessions to expire")]
    PerPrincipal(usize),
    /// The process has the maximum number of open sessions.
    #[error("the gateway has too many open MCP sessions (limit {0}); try again later")]
    Total(usize),
}

#[derive(Debug)]
struct Entry {
    principal: PrincipalId,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Entry>,
    /// Initialize requests admitted but not yet bound to an id, by principal.
    pending: HashMap<PrincipalId, usize>,
}

/// Session ownership, caps and idle expiry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionRegistry {
    /// Guarded for short, await-free sections only.
    inner: Arc<Mutex<Inner>>,
    ttl: Duration,
    per_principal: usize,
    total: usize,
}

/// A slot reserved for a session being opened; released on drop unless bound.
#[derive(Debug)]
pub struct Reservation {
    registry: SessionRegistry,
    principal: PrincipalId,
    done: bool,
}

impl Reservation {
    /// Binds the reserved slot to the id rmcp assigned.
    pub fn bind(mut self, session_id: String) {
        let mut inner = self.registry.lock();
        release_pending(&mut inner, self.principal);
        inner.sessions.insert(
            session_id,
            Entry {
                principal: self.principal,
                last_used: Instant::now(),
            },
        );
        self.done = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            let mut inner = self.registry.lock();
            release_pending(&mut inner, self.principal);
        }
    }
}

fn release_pending(inner: &mut Inner, principal: PrincipalId) {
    if let Some(count) = inner.pending.get_mut(&principal) {
        *count -= 1;
        if *count == 0 {
            inner.pending.remove(&principal);
        }
    }
}

impl SessionRegistry {
    /// A registry with the given idle TTL and caps.
    pub fn new(ttl: Duration, per_principal: usize, total: usize) -> Self {
        Self {
            inner: Arc::default(),
            ttl,
            per_principal,
            total,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("invariant: session registry lock is never poisoned")
    }

    /// Looks up `session_id` for `principal`, marking it used when owned.
    pub fn check(&self, session_id: &str, principal: PrincipalId) -> SessionCheck {
        let mut inner = self.lock();
        match inner.sessions.get_mut(session_id) {
            Some(entry) if entry.principal == principal => {
                entry.last_used = Instant::now();
                SessionCheck::Owned
            }
            Some(_) => SessionCheck::Foreign,
            None => SessionCheck::Unknown,
        }
    }

    /// Reserves room for a new session of `principal`, or says which cap is reached. Counts
    /// sessions being opened concurrently, so the caps hold under races too.
    pub fn reserve(&self, principal: PrincipalId) -> Result<Reservation, SessionLimit> {
        let mut inner = self.lock();
        let pending_total: usize = inner.pending.values().sum();
        if inner.sessions.len() + pending_total >= self.total {
            return Err(SessionLimit::Total(self.total));
        }
        let mine = inner
            .sessions
            .values()
            .filter(|e| e.principal == principal)
            .count()
            + inner.pending.get(&principal).copied().unwrap_or(0);
        if mine >= self.per_principal {
            return Err(SessionLimit::PerPrincipal(self.per_principal));
        }
        *inner.pending.entry(principal).or_default() += 1;
        Ok(Reservation {
            registry: self.clone(),
            principal,
            done: false,
        })
    }

    /// Forgets a session (closed by the client).
    pub fn remove(&self, session_id: &str) {
        self.lock().sessions.remove(session_id);
    }

    /// Removes and returns the sessions idle for longer than the TTL.
    pub fn take_expired(&self) -> Vec<String> {
        let ttl = self.ttl;
        let mut inner = self.lock();
        let expired: Vec<String> = inner
            .sessions
            .iter()
            .filter(|(_, entry)| entry.last_used.elapsed() > ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            inner.sessions.remove(id);
        }
        expired
    }

    /// Open sessions, in total.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The idle TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_bound_to_their_principal() {
        let registry = SessionRegistry::new(Duration::from_secs(60), 2, 10);
        let (alice, bob) = (PrincipalId::new(), PrincipalId::new());
        registry.reserve(alice).unwrap().bind("s1".into());
        assert_eq!(registry.check("s1", alice), SessionCheck::Owned);
        assert_eq!(registry.check("s1", bob), SessionCheck::Foreign);
        assert_eq!(registry.check("s2", alice), SessionCheck::Unknown);
        registry.remove("s1");
        assert_eq!(registry.check("s1", alice), SessionCheck::Unknown);
    }

    #[test]
    fn caps_count_pending_and_open_sessions() {
        let registry = SessionRegistry::new(Duration::from_secs(60), 2, 3);
        let (alice, bob) = (PrincipalId::new(), PrincipalId::new());
        let first = registry.reserve(alice).unwrap();
        let second = registry.reserve(alice).unwrap();
        assert_eq!(
            registry.reserve(alice).unwrap_err(),
            SessionLimit::PerPrincipal(2)
        );
        drop(second); // a failed initialize frees its slot
        first.bind("a1".into());
        registry.reserve(alice).unwrap().bind("a2".into());
        assert_eq!(
            registry.reserve(alice).unwrap_err(),
            SessionLimit::PerPrincipal(2)
        );
        registry.reserve(bob).unwrap().bind("b1".into());
        assert_eq!(registry.reserve(bob).unwrap_err(), SessionLimit::Total(3));
        assert_eq!(registry.len(), 3);
    }

    #[test]
    fn zero_ttl_expires_everything_idle() {
        let registry = SessionRegistry::new(Duration::ZERO, 5, 5);
        let alice = PrincipalId::new();
        registry.reserve(alice).unwrap().bind("s1".into());
        // Any elapsed time exceeds a zero TTL once the clock has moved.
        let start = Instant::now();
        while start.elapsed().is_zero() {}
        assert_eq!(registry.take_expired(), vec!["s1".to_owned()]);
        assert!(registry.is_empty());
    }
}
