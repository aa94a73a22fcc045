//! The per-key rate of new sessions (DESIGN.md: "a rate of new sessions (token bucket, in
//! memory)"): every API key has a bucket of `new_sessions_burst` tokens that refills at
//! `new_sessions_per_minute`; a new session takes one token, and a key with an empty bucket is
//! refused (HTTP 429 before the upgrade, close `LIMIT_EXCEEDED` after it).
//!
//! The buckets live in this process only: with several replicas each holds its own, so a key
//! may open up to `replicas × rate` sessions. (The concurrent-session limit, `max_sessions`, is
//! the one that holds across replicas.) Keyless `--dev` sessions are not rate-limited.
//!
//! # What callers must keep
//!
//! Take a token once per session, after the key is authenticated (an unknown key must not
//! create a bucket), and pass the time in: the limiter reads no clock, so it is tested with
//! exact instants.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use uuid::Uuid;

/// `[limits]`: per-key limits besides the key's own `max_sessions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// New sessions a key may open per minute, sustained. Default 600 (10 a second); at
    /// least 1.
    pub new_sessions_per_minute: u32,
    /// New sessions a key may open at once, before the rate applies. Default 100; at least 1.
    pub new_sessions_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            new_sessions_per_minute: 600,
            new_sessions_burst: 100,
        }
    }
}

impl LimitsConfig {
    /// Checks the ranges serde cannot express; the message names the key.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.new_sessions_per_minute == 0 {
            return Err("limits.new_sessions_per_minute must be at least 1".to_owned());
        }
        if self.new_sessions_burst == 0 {
            return Err("limits.new_sessions_burst must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// A key opened sessions faster than its rate allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the key is opening sessions faster than its limit; retry in {} s", retry_after.as_secs().max(1))]
pub struct RateLimited {
    /// When the next token will be there.
    pub retry_after: Duration,
}

/// Buckets beyond this many make [`SessionRateLimiter::try_acquire`] drop the full ones (a
/// full bucket is the same as no bucket), so memory follows the keys in use, not all keys ever.
const PRUNE_ABOVE_BUCKETS: usize = 4_096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

/// Token buckets of new sessions, one per API key. Shared by every request handler; the lock
/// is held for a few arithmetic operations and never across an await.
#[derive(Debug)]
pub struct SessionRateLimiter {
    tokens_per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

impl SessionRateLimiter {
    /// A limiter with `config`'s rate and burst (validated by the config loader).
    pub fn new(config: LimitsConfig) -> Self {
        SessionRateLimiter {
            tokens_per_sec: f64::from(config.new_sessions_per_minute.max(1)) / 60.0,
            burst: f64::from(config.new_sessions_burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token of `key`'s bucket at `now`.
    ///
    /// # Errors
    /// [`RateLimited`] when the bucket is empty, with the wait until the next token.
    pub fn try_acquire(&self, key: Uuid, now: Instant) -> Result<(), RateLimited> {
        // A poisoned lock only means another thread panicked mid-update of plain numbers.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > PRUNE_ABOVE_BUCKETS {
            let (rate, burst) = (self.tokens_per_sec, self.burst);
            buckets.retain(|_, b| refilled(b, now, rate, burst) < burst);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            refilled_at: now,
        });
        bucket.tokens = refilled(bucket, now, self.tokens_per_sec, self.burst);
        bucket.refilled_at = now.max(bucket.refilled_at);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - bucket.tokens;
            Err(RateLimited {
                retry_after: Duration::from_secs_f64(missing / self.tokens_per_sec),
            })
        }
    }
}

/// The tokens `bucket` holds at `now` (clocks never run backwards here: an earlier `now`
/// refills nothing).
fn refilled(bucket: &Bucket, now: Instant, tokens_per_sec: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.refilled_at);
    (bucket.tokens + elapsed.as_secs_f64() * tokens_per_sec).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_minute: u32, burst: u32) -> SessionRateLimiter {
        SessionRateLimiter::new(LimitsConfig {
            new_sessions_per_minute: per_minute,
            new_sessions_burst: burst,
        })
    }

    #[test]
    fn burst_then_rate() {
        let limiter = limiter(60, 3);
        let key = Uuid::now_v7();
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.try_acquire(key, t0).unwrap();
        }
        let refused = limiter.try_acquire(key, t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert!(
            limiter
                .try_acquire(key, t0 + Duration::from_millis(500))
                .is_err()
        );
        limiter
            .try_acquire(key, t0 + Duration::from_millis(1_000))
            .unwrap();
        assert!(
            limiter
                .try_acquire(key, t0 + Duration::from_millis(1_000))
                .is_err()
        );
    }

    #[test]
    fn keys_have_their_own_buckets_and_refill_caps_at_the_burst() {
        let limiter = limiter(60, 2);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let t0 = Instant::now();
        limiter.try_acquire(a, t0).unwrap();
        limiter.try_acquire(a, t0).unwrap();
        assert!(limiter.try_acquire(a, t0).is_err());
        limiter.try_acquire(b, t0).unwrap();
        // An hour later the bucket holds the burst, not 3,600 tokens.
        let later = t0 + Duration::from_secs(3_600);
        limiter.try_acquire(a, later).unwrap();
        limiter.try_acquire(a, later).unwrap();
        assert!(limiter.try_acquire(a, later).is_err());
    }

    #[test]
    fn full_buckets_are_pruned() {
        let limiter = limiter(600, 1);
        let t0 = Instant::now();
        for _ in 0..=PRUNE_ABOVE_BUCKETS {
            limiter.try_acquire(Uuid::now_v7(), t0).unwrap();
        }
        let later = t0 + Duration::from_secs(1);
        limiter.try_acquire(Uuid::now_v7(), later).unwrap();
        let len = limiter.buckets.lock().unwrap().len();
        assert_eq!(len, 1, "only the newest key's bucket is not full");
    }

    #[test]
    fn zero_values_are_refused_by_validation() {
        let zero_rate = LimitsConfig {
            new_sessions_per_minute: 0,
            ..LimitsConfig::default()
        };
        assert!(zero_rate.validate().unwrap_err().contains("per_minute"));
        let zero_burst = LimitsConfig {
            new_sessions_burst: 0,
            ..LimitsConfig::default()
        };
        assert!(zero_burst.validate().unwrap_err().contains("burst"));
        LimitsConfig::default().validate().unwrap();
    }
}
