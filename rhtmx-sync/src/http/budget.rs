//! Budgets of open event streams and running pulls: in total (a semaphore each, see
//! `Inner`) and per principal, so that one signed-in user cannot take every place.
//!
//! A place is held for as long as its stream is open or its pull's body is being
//! written, and given back when that ends (dropped). Anonymous requests share the total
//! budget only: without a principal there is no one to count them against, and an app
//! without sign-in has every user anonymous.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};
use crate::principal::Principal;

/// Whom places are counted against: a principal's user and tenant.
type Holder = (Option<String>, Option<String>);

/// The places of one kind (streams or pulls).
#[derive(Debug)]
pub(crate) struct Budget {
    what: &'static str,
    retry_after: u64,
    total: Arc<Semaphore>,
    per_principal: usize,
    held: Mutex<HashMap<Holder, usize>>,
}

/// A place taken; given back when dropped.
#[derive(Debug)]
pub(crate) struct Place {
    _total: OwnedSemaphorePermit,
    owner: Option<(Arc<Budget>, Holder)>,
}

impl Budget {
    /// `total` places, at most `per_principal` of them for one principal; the excess
    /// answers [`Error::Busy`] naming `what`, with `Retry-After: retry_after` seconds.
    pub(crate) fn new(
        what: &'static str,
        retry_after: u64,
        total: usize,
        per_principal: usize,
    ) -> Arc<Budget> {
        Arc::new(Budget {
            what,
            retry_after,
            total: Arc::new(Semaphore::new(total)),
            per_principal,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place for `principal`, or 429 at once.
    pub(crate) fn take(self: &Arc<Self>, principal: &Principal) -> Result<Place> {
        let busy = || Error::Busy {
            what: self.what,
            retry_after: self.retry_after,
        };
        let total = self.total.clone().try_acquire_owned().map_err(|_| busy())?;
        if principal.user.is_none() && principal.tenant.is_none() {
            return Ok(Place {
                _total: total,
                owner: None,
            });
        }
        let key = (principal.user.clone(), principal.tenant.clone());
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= self.per_principal {
            return Err(busy());
        }
        *count += 1;
        Ok(Place {
            _total: total,
            owner: Some((self.clone(), key)),
        })
    }

    /// Places free in total (for tests and logs).
    #[cfg(test)]
    fn available(&self) -> usize {
        self.total.available_permits()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some((budget, key)) = self.owner.take() {
            let mut held = budget.held.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = held.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    held.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_principal_takes_at_most_its_share_and_gives_it_back() {
        let budget = Budget::new("pulls", 1, 5, 2);
        let alice = Principal::user("alice");
        let a1 = budget.take(&alice).unwrap();
        let _a2 = budget.take(&alice).unwrap();
        assert!(matches!(budget.take(&alice), Err(Error::Busy { .. })));
        // Another principal, and anonymous requests, still get places.
        let _b = budget.take(&Principal::user("bob")).unwrap();
        let _anon = budget.take(&Principal::anonymous()).unwrap();
        assert_eq!(budget.available(), 1);
        drop(a1);
        let _a3 = budget.take(&alice).unwrap();
        let _anon2 = budget.take(&Principal::anonymous()).unwrap();
        // The total holds for everyone.
        assert!(matches!(
            budget.take(&Principal::anonymous()),
            Err(Error::Busy { .. })
        ));
        assert!(budget.held.lock().unwrap().len() == 2);
    }
}
