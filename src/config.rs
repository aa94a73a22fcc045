//! The TOML configuration file (`--config`/`VOXROUTE_CONFIG`): routes, limits, prices and
//! retention. Secrets never live here; they come from the environment.
//!
//! [`Config`] has one field per top-level table; every table has defaults, so an empty or
//! missing file is a valid configuration, and unknown keys are errors (a typo must not silently
//! turn a privacy setting back to its default). `voxroute.example.toml` at the repository root
//! documents every key; keep it in step with this file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::health::HealthConfig;
use crate::limits::LimitsConfig;
use crate::routing::{DEFAULT_ROUTE, ECHO, ProviderConfig, RouteConfig};
use crate::usage::{ProviderPrice, validate_prices};

/// Everything the TOML file can set. Add a section as a new field with `#[serde(default)]`
/// semantics (its type implements `Default`) and document it in `voxroute.example.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// `[retention]`: how long session records and client IPs are kept. Applied hourly by
    /// `voxroute serve` and on demand by `voxroute retention run`.
    pub retention: RetentionConfig,
    /// `[session]`: settings every live session gets.
    pub session: SessionSettings,
    /// `default_route`: the route of callers that name neither a provider nor a route.
    /// Default `default` (built in: `echo`, unless a `[routes.default]` table says otherwise).
    pub default_route: String,
    /// `[providers.NAME]`: upstream providers besides the built-in `echo`.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// `[routes.NAME]`: named lists of providers, in order of preference.
    pub routes: BTreeMap<String, RouteConfig>,
    /// `[limits]`: per-key rate of new sessions.
    pub limits: LimitsConfig,
    /// `[health]`: when a failing provider is skipped (circuit breaker), for every route.
    pub health: HealthConfig,
    /// `[prices.PROVIDER]`: US dollars per minute of audio in and out, for the estimated
    /// cost of `GET /v1/usage`. A provider without a table costs nothing; a table must name
    /// a configured or built-in provider.
    pub prices: BTreeMap<String, ProviderPrice>,
    /// `[webrtc]`: how browsers reach the media ports of `POST /v1/webrtc` (ICE).
    pub webrtc: crate::edge::webrtc::WebRtcSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            retention: RetentionConfig::default(),
            session: SessionSettings::default(),
            default_route: DEFAULT_ROUTE.to_owned(),
            providers: BTreeMap::new(),
            routes: BTreeMap::new(),
            limits: LimitsConfig::default(),
            health: HealthConfig::default(),
            prices: BTreeMap::new(),
            webrtc: crate::edge::webrtc::WebRtcSettings::default(),
        }
    }
}

/// `[session]`: settings every live session gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    /// End a session whose caller sends no audio for this many seconds (`IDLE_TIMEOUT`).
    /// Default 30; at least 1.
    pub idle_timeout_secs: u64,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            idle_timeout_secs: 30,
        }
    }
}

/// `[retention]`: the data-keeping promise of DESIGN.md. Whichever rule applies first wins: a
/// record older than `delete_after_days` is gone, so its IP needs no anonymising.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Session records that started more than this many days ago are deleted. Default 30;
    /// at least 1.
    pub delete_after_days: u32,
    /// Client IPs of sessions that started more than this many days ago are anonymised
    /// (IPv4 to its /24, IPv6 to its /48). Default 30; at least 1.
    pub anonymise_ip_after_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            delete_after_days: 30,
            anonymise_ip_after_days: 30,
        }
    }
}

/// Why the configuration could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a value of the wrong type.
    #[error("invalid config file {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line and column.
        source: toml::de::Error,
    },
    /// The file parsed but a value is out of range.
    #[error("invalid config file {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which key and why.
        message: String,
    },
}

impl Config {
    /// Loads the configuration from `path`, or the defaults when there is no file.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file and the problem: unreadable, not TOML, unknown key,
    /// wrong type, or a value out of range.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ParseProblem::Toml(source) => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            ParseProblem::Invalid(message) => ConfigError::Invalid {
                path: path.to_owned(),
                message,
            },
        })
    }

    fn parse(text: &str) -> Result<Config, ParseProblem> {
        let config: Config = toml::from_str(text).map_err(ParseProblem::Toml)?;
        config.validate().map_err(ParseProblem::Invalid)?;
        Ok(config)
    }

    /// Checks ranges that serde cannot express; the message names the key.
    fn validate(&self) -> Result<(), String> {
        let r = &self.retention;
        for (key, days) in [
            ("delete_after_days", r.delete_after_days),
            ("anonymise_ip_after_days", r.anonymise_ip_after_days),
        ] {
            if days == 0 {
                return Err(format!(
                    "retention.{key} must be at least 1 (0 would act on sessions still live); \
                     use a larger number to keep data longer"
                ));
            }
        }
        if self.session.idle_timeout_secs == 0 {
            return Err("session.idle_timeout_secs must be at least 1".to_owned());
        }
        self.health.validate()?;
        self.limits.validate()?;
        self.webrtc.validate()?;
        validate_prices(&self.prices, |name| {
            self.providers.contains_key(name)
                || name == ECHO
                || crate::hosted::Hosted::ALL.iter().any(|h| h.name() == name)
        })
    }
}

/// A problem in the text, before the file name is attached.
enum ParseProblem {
    Toml(toml::de::Error),
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_and_empty_file_give_defaults() {
        assert_eq!(Config::load(None).unwrap(), Config::default());
        assert_eq!(Config::parse("").ok(), Some(Config::default()));
        assert_eq!(Config::default().retention.delete_after_days, 30);
        assert_eq!(Config::default().retention.anonymise_ip_after_days, 30);
    }

    #[test]
    fn retention_keys_are_read_and_partial_tables_keep_defaults() {
        let config = Config::parse("[retention]\nanonymise_ip_after_days = 7\n")
            .ok()
            .unwrap();
        assert_eq!(config.retention.anonymise_ip_after_days, 7);
        assert_eq!(config.retention.delete_after_days, 30);
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("voxroute.example.toml");
        assert_eq!(Config::load(Some(&path)).unwrap(), Config::default());
    }

    /// The example's commented provider and route tables, uncommented, are a valid
    /// configuration that routes the default route to the example model.
    #[test]
    fn the_example_tables_uncommented_route() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("voxroute.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let uncommented: String = text
            .lines()
            .map(|line| {
                let bare = line.strip_prefix("# ").unwrap_or(line);
                let table = bare.starts_with("[providers.") || bare.starts_with("[routes.");
                let key = [
                    "kind = ",
                    "url = ",
                    "sample_rate_hz = ",
                    "providers = ",
                    "policy = ",
                    "weights = ",
                ]
                .iter()
                .any(|k| bare.starts_with(k));
                if table || key { bare } else { line }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = Config::parse(&uncommented).ok().unwrap();
        let router = crate::routing::Router::new(
            &config.providers,
            &config.routes,
            &config.default_route,
            &crate::hosted::ProviderEnv::default(),
        )
        .unwrap();
        let resolved = router
            .resolve(&voxroute_actors::protocol::RouteTarget::Default)
            .unwrap();
        assert_eq!(resolved.provider.name, "my-model");
    }

    #[test]
    fn prices_are_read_validated_and_named_in_errors() {
        let config = Config::parse(
            "[providers.mine]\nkind = \"echo\"\n\
             [prices.mine]\nusd_per_minute_in = 0.5\n\
             [prices.openai]\nusd_per_minute_in = 0.06\nusd_per_minute_out = 0.24\n",
        )
        .ok()
        .unwrap();
        assert_eq!(config.prices["mine"].usd_per_minute_in, 0.5);
        assert_eq!(config.prices["mine"].usd_per_minute_out, 0.0, "default 0");
        assert_eq!(config.prices["openai"].usd_per_minute_out, 0.24);
        let problem = |text: &str| match Config::parse(text) {
            Err(ParseProblem::Invalid(message)) => message,
            Err(ParseProblem::Toml(error)) => error.to_string(),
            Ok(_) => panic!("accepted: {text}"),
        };
        let message = problem("[prices.echo]\nusd_per_minute_out = -1.0\n");
        assert!(
            message.contains("prices.echo.usd_per_minute_out"),
            "{message}"
        );
        let message = problem("[prices.nobody]\nusd_per_minute_in = 1.0\n");
        assert!(message.contains("prices.nobody"), "{message}");
        let message = problem("[prices.echo]\nusd_per_minute = 1.0\n");
        assert!(message.contains("usd_per_minute"), "{message}");
    }

    #[test]
    fn zero_idle_timeout_is_refused() {
        let problem = Config::parse("[session]\nidle_timeout_secs = 0\n").err();
        assert!(problem.is_some());
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = std::env::temp_dir().join(format!("voxroute-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");

        std::fs::write(&file, "[retention]\ndelete_after_dayz = 3\n").unwrap();
        let msg = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(
            msg.contains("bad.toml") && msg.contains("delete_after_dayz"),
            "{msg}"
        );

        std::fs::write(&file, "[retention]\ndelete_after_days = \"soon\"\n").unwrap();
        let msg = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(
            msg.contains("bad.toml") && msg.contains("delete_after_days"),
            "{msg}"
        );

        std::fs::write(&file, "[retention]\ndelete_after_days = 0\n").unwrap();
        let msg = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(
            msg.contains("bad.toml") && msg.contains("at least 1"),
            "{msg}"
        );

        let missing = dir.join("missing.toml");
        let msg = Config::load(Some(&missing)).unwrap_err().to_string();
        assert!(msg.contains("missing.toml"), "{msg}");

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
