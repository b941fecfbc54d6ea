//! The open WebSockets of each principal in this process, capped.
//!
//! Every socket holds a queue, tasks and buffers, so an unlimited number of them per
//! credential would let one user or API key take the process's memory. A socket takes a
//! [`Slot`] when its upgrade is accepted and gives it back when it closes (the slot is
//! dropped with the connection, or with the upgrade that never completed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use uuid::Uuid;

use crate::auth::{Caller, Identity};

/// Whose sockets are counted together: a user (all its tokens), or one API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Principal {
    User(Uuid),
    ApiKey(Uuid),
}

impl Principal {
    pub fn of(caller: &Caller) -> Self {
        match caller.identity {
            Identity::User { id, .. } => Self::User(id),
            Identity::ApiKey { id, .. } => Self::ApiKey(id),
        }
    }
}

/// The principal already holds the most sockets allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("at most {limit} WebSockets may be open at once per user or API key")]
pub struct TooManySockets {
    pub limit: usize,
}

/// The open sockets per principal.
#[derive(Debug)]
pub struct Sockets {
    limit: usize,
    open: Mutex<HashMap<Principal, usize>>,
}

impl Sockets {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            open: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Principal, usize>> {
        // Every change is one statement: a panic elsewhere leaves the counts whole.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for one more socket of `principal`, unless it holds the most already.
    pub fn open(self: &Arc<Self>, principal: Principal) -> Result<Slot, TooManySockets> {
        let mut open = self.lock();
        let count = open.entry(principal).or_default();
        if *count >= self.limit {
            return Err(TooManySockets { limit: self.limit });
        }
        *count += 1;
        Ok(Slot {
            sockets: self.clone(),
            principal,
        })
    }

    /// Sockets open in this process.
    pub fn total(&self) -> usize {
        self.lock().values().sum()
    }

    fn close(&self, principal: Principal) {
        let mut open = self.lock();
        if let Some(count) = open.get_mut(&principal) {
            *count = count.saturating_sub(1);
            // A principal without sockets takes no memory here either.
            if *count == 0 {
                open.remove(&principal);
            }
        }
    }
}

/// One open socket; closing it (dropping the slot) frees its place.
#[derive(Debug)]
pub struct Slot {
    sockets: Arc<Sockets>,
    principal: Principal,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.sockets.close(self.principal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_gets_at_most_the_limit_and_a_closed_socket_frees_its_place() {
        let sockets = Sockets::new(2);
        let user = Principal::User(Uuid::new_v4());
        let first = sockets.open(user).expect("a first slot");
        let _second = sockets.open(user).expect("a second slot");
        assert_eq!(
            sockets.open(user).map(|_| ()),
            Err(TooManySockets { limit: 2 })
        );
        let _other = sockets
            .open(Principal::ApiKey(Uuid::new_v4()))
            .expect("another principal is counted apart");
        assert_eq!(sockets.total(), 3);
        drop(first);
        let _again = sockets.open(user).expect("a freed slot");
        assert_eq!(sockets.total(), 3);
    }

    #[test]
    fn a_principal_whose_sockets_all_closed_is_forgotten() {
        let sockets = Sockets::new(1);
        drop(sockets.open(Principal::User(Uuid::new_v4())));
        assert!(sockets.lock().is_empty());
    }
}
