//! Provider health, shared by every session of the process: a circuit breaker and smoothed
//! latencies per provider, which [`crate::routing::Router`] uses to order a route's
//! candidates.
//!
//! # What it owns
//!
//! One [`Health`] per router (an `Arc` inside it, so clones share it), holding per provider
//! name:
//!
//! - **a circuit breaker**: after [`HealthConfig::failure_threshold`] failures in a row the
//!   breaker opens and the provider is *cooling down* for [`HealthConfig::cool_down_secs`]:
//!   routes try it last. When the cool-down has passed the breaker is *half-open*: the provider
//!   is tried in its place again, one more failure opens it again at once, a success closes it.
//! - **latency**: exponentially weighted moving averages ([`LATENCY_EWMA_WEIGHT`]) of the
//!   connect time (start of the connection to `Ready`) and of the first-response time (from the
//!   first caller audio the ready provider got to its first audio or transcript), for the
//!   `lowest-latency` policy.
//!
//! # What callers must keep
//!
//! Report every connection's outcome once: [`Health::report_connected`] when it is ready,
//! [`Health::report_first_response`] at its first answer, [`Health::report_failure`] when it
//! fails (refused, timed out, dropped). A normal end is no report. Time is passed in (`now`), so
//! tests are deterministic; the lock is a plain mutex held for a few map operations, never
//! across an await.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Weight of a new sample in the latency averages: `avg = avg + w * (sample - avg)`. A quarter
/// follows a provider that got slower within a handful of sessions without letting one slow
/// connect reorder a route.
pub const LATENCY_EWMA_WEIGHT: f64 = 0.25;

/// `[health]`: the circuit breaker's settings, for every provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Failures in a row (across all sessions) after which a provider cools down. Default 3;
    /// at least 1.
    pub failure_threshold: u32,
    /// How long a provider cools down (tried last by every route), in seconds. Default 30;
    /// at least 1.
    pub cool_down_secs: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            failure_threshold: 3,
            cool_down_secs: 30,
        }
    }
}

impl HealthConfig {
    /// Checks the ranges serde cannot; the message names the key.
    ///
    /// # Errors
    /// A message naming the key that is out of range.
    pub fn validate(&self) -> Result<(), String> {
        if self.failure_threshold == 0 {
            return Err("health.failure_threshold must be at least 1".to_owned());
        }
        if self.cool_down_secs == 0 {
            return Err("health.cool_down_secs must be at least 1".to_owned());
        }
        Ok(())
    }

    /// [`cool_down_secs`](Self::cool_down_secs) as a duration.
    pub fn cool_down(&self) -> Duration {
        Duration::from_secs(self.cool_down_secs)
    }
}

/// Where a provider's breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Healthy (fewer failures in a row than the threshold).
    Closed,
    /// Cooling down until this instant: routes try the provider last.
    Open {
        /// When the cool-down ends.
        until: Instant,
    },
    /// The cool-down is over: the provider is tried again; its next outcome decides.
    HalfOpen,
}

/// What is known about one provider.
#[derive(Debug, Clone, Copy, Default)]
struct ProviderHealth {
    consecutive_failures: u32,
    /// Set when the breaker opens; cleared by a success.
    open_until: Option<Instant>,
    connect_ms: Option<f64>,
    first_response_ms: Option<f64>,
}

impl ProviderHealth {
    fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open { until },
            Some(_) => BreakerState::HalfOpen,
        }
    }
}

/// The shared health registry: see the [module documentation](self).
#[derive(Debug)]
pub struct Health {
    config: HealthConfig,
    providers: Mutex<HashMap<String, ProviderHealth>>,
}

impl Health {
    /// An empty registry: every provider healthy and unmeasured.
    pub fn new(config: HealthConfig) -> Self {
        Health {
            config,
            providers: Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn config(&self) -> HealthConfig {
        self.config
    }

    /// Runs `f` on the provider's entry (created on first use).
    fn with<T>(&self, provider: &str, f: impl FnOnce(&mut ProviderHealth) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update of plain numbers;
        // the numbers are still usable.
        let mut providers = self
            .providers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = providers.get_mut(provider) {
            return f(entry);
        }
        f(providers.entry(provider.to_owned()).or_default())
    }

    /// Reads the provider's entry without creating one.
    fn read<T>(&self, provider: &str, f: impl FnOnce(&ProviderHealth) -> T) -> T {
        let providers = self
            .providers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(providers
            .get(provider)
            .unwrap_or(&ProviderHealth::default()))
    }

    /// A connection to `provider` became ready after `connect`: a success, which closes its
    /// breaker, and a connect-time sample.
    pub fn report_connected(&self, provider: &str, connect: Duration) {
        self.with(provider, |entry| {
            entry.consecutive_failures = 0;
            entry.open_until = None;
            entry.connect_ms = Some(ewma(entry.connect_ms, millis_f64(connect)));
        });
    }

    /// A ready connection to `provider` answered for the first time, `latency` after it got
    /// the caller's first audio.
    pub fn report_first_response(&self, provider: &str, latency: Duration) {
        self.with(provider, |entry| {
            entry.first_response_ms = Some(ewma(entry.first_response_ms, millis_f64(latency)));
        });
    }

    /// A connection to `provider` failed at `now` (refused, timed out, dropped mid-call).
    pub fn report_failure(&self, provider: &str, now: Instant) {
        let config = self.config;
        let opened = self.with(provider, |entry| {
            entry.consecutive_failures = entry.consecutive_failures.saturating_add(1);
            let open = match entry.state(now) {
                // One failure of the trial reopens it.
                BreakerState::HalfOpen => true,
                BreakerState::Closed => entry.consecutive_failures >= config.failure_threshold,
                // Already cooling down (a session that started before it opened).
                BreakerState::Open { .. } => false,
            };
            if open {
                entry.open_until = Some(now + config.cool_down());
            }
            open.then_some(entry.consecutive_failures)
        });
        if let Some(failures) = opened {
            tracing::warn!(
                provider,
                failures,
                cool_down_secs = config.cool_down_secs,
                "provider keeps failing: cooling down"
            );
        }
    }

    /// The provider's breaker at `now`.
    pub fn state(&self, provider: &str, now: Instant) -> BreakerState {
        self.read(provider, |entry| entry.state(now))
    }

    /// Whether routes should try the provider last at `now`.
    pub fn is_cooling_down(&self, provider: &str, now: Instant) -> bool {
        matches!(self.state(provider, now), BreakerState::Open { .. })
    }

    /// The smoothed connect plus first-response latency, in milliseconds; `None` until the
    /// provider has connected once. A provider measured for connects only counts those.
    pub fn latency_ms(&self, provider: &str) -> Option<f64> {
        self.read(provider, |entry| {
            entry
                .connect_ms
                .map(|connect| connect + entry.first_response_ms.unwrap_or(0.0))
        })
    }
}

fn ewma(average: Option<f64>, sample: f64) -> f64 {
    match average {
        None => sample,
        Some(average) => average + LATENCY_EWMA_WEIGHT * (sample - average),
    }
}

fn millis_f64(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(threshold: u32) -> Health {
        Health::new(HealthConfig {
            failure_threshold: threshold,
            cool_down_secs: 10,
        })
    }

    /// N failures in a row open the breaker for the cool-down; a success in between resets
    /// the count; after the cool-down the breaker is half-open, where one failure reopens it
    /// and a success closes it.
    #[test]
    fn breaker_opens_after_n_failures_then_half_opens_and_closes() {
        let t0 = Instant::now();
        let health = health(3);
        assert_eq!(health.state("a", t0), BreakerState::Closed);
        health.report_failure("a", t0);
        health.report_failure("a", t0);
        health.report_connected("a", Duration::from_millis(10));
        health.report_failure("a", t0);
        health.report_failure("a", t0);
        assert_eq!(
            health.state("a", t0),
            BreakerState::Closed,
            "the count was reset"
        );
        health.report_failure("a", t0);
        let until = t0 + Duration::from_secs(10);
        assert_eq!(health.state("a", t0), BreakerState::Open { until });
        assert!(health.is_cooling_down("a", until - Duration::from_millis(1)));
        assert!(!health.is_cooling_down("b", t0), "others are unaffected");

        assert_eq!(health.state("a", until), BreakerState::HalfOpen);
        health.report_failure("a", until);
        assert_eq!(
            health.state("a", until),
            BreakerState::Open {
                until: until + Duration::from_secs(10)
            },
            "one failure in half-open reopens it"
        );
        let later = until + Duration::from_secs(10);
        assert_eq!(health.state("a", later), BreakerState::HalfOpen);
        health.report_connected("a", Duration::from_millis(10));
        assert_eq!(health.state("a", later), BreakerState::Closed);
        health.report_failure("a", later);
        assert_eq!(health.state("a", later), BreakerState::Closed);
    }

    /// Latency is the smoothed connect time plus the smoothed first response.
    #[test]
    fn latency_is_smoothed() {
        let health = health(3);
        assert_eq!(health.latency_ms("a"), None);
        health.report_connected("a", Duration::from_millis(100));
        assert_eq!(health.latency_ms("a"), Some(100.0));
        health.report_connected("a", Duration::from_millis(200));
        assert_eq!(health.latency_ms("a"), Some(125.0));
        health.report_first_response("a", Duration::from_millis(40));
        assert_eq!(health.latency_ms("a"), Some(165.0));
    }

    #[test]
    fn zero_settings_are_refused() {
        assert!(HealthConfig::default().validate().is_ok());
        let zero = HealthConfig {
            failure_threshold: 0,
            ..HealthConfig::default()
        };
        assert!(zero.validate().unwrap_err().contains("failure_threshold"));
        let zero = HealthConfig {
            cool_down_secs: 0,
            ..HealthConfig::default()
        };
        assert!(zero.validate().unwrap_err().contains("cool_down_secs"));
    }
}
