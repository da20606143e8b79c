//! Decisions kept for a while, by a key computed from the call: a warm cache answers without a
//! round trip to the decision service.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use super::Decision;

/// A decision and when it stops being fresh, by key.
type Entries = HashMap<Box<str>, (Instant, Arc<Decision>)>;

/// Decisions by key, each until its time is up; bounded in entries and in key bytes.
#[derive(Debug)]
pub struct DecisionCache {
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<Entries>,
}

/// Longest key kept: a longer one is not cached (the decision is still made).
pub const MAX_KEY_BYTES: usize = 1024;

impl DecisionCache {
    /// A cache keeping decisions for `ttl`, at most `max_entries` of them.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The decision kept for `key`, if it is still fresh.
    pub fn get(&self, key: &str) -> Option<Arc<Decision>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(key)
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, decision)| decision.clone())
    }

    /// Keeps `decision` for `key`. When full, expired entries go first; if none has, the cache
    /// starts over (a full cache of fresh entries is a sign the key is too fine).
    pub fn put(&self, key: &str, decision: Arc<Decision>) {
        if key.len() > MAX_KEY_BYTES {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.max_entries && !entries.contains_key(key) {
            entries.retain(|_, (until, _)| now < *until);
            if entries.len() >= self.max_entries {
                entries.clear();
            }
        }
        entries.insert(key.into(), (now + self.ttl, decision));
    }

    /// Entries held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow() -> Arc<Decision> {
        Arc::new(Decision {
            allow: true,
            ..Decision::default()
        })
    }

    #[test]
    fn entries_expire_and_the_cache_stays_bounded() {
        let cache = DecisionCache::new(Duration::from_millis(30), 2);
        cache.put("a", allow());
        assert!(cache.get("a").is_some_and(|d| d.allow));
        assert!(cache.get("b").is_none());
        cache.put("b", allow());
        cache.put("c", allow());
        assert!(cache.len() <= 2, "{}", cache.len());
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get("c").is_none(), "expired");
        cache.put(&"k".repeat(MAX_KEY_BYTES + 1), allow());
        assert!(cache.get(&"k".repeat(MAX_KEY_BYTES + 1)).is_none());
    }
}
