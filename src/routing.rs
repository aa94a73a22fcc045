//! Which provider answers a session: the providers and routes of the configuration, and
//! [`Router::resolve`], which turns what a caller asked for (a provider, a route, or nothing)
//! into the ordered list of providers to try: the first to connect to, then the fallbacks a
//! session fails over to, in order.
//!
//! Built once at start from the configuration and validated then: a route naming an unknown
//! provider, or a `ws-pcm` provider without a URL, stops `voxroute serve` with a clear error
//! instead of failing calls later. The built-in providers `echo`, `openai`, `deepgram` and
//! `gemini` always exist (the hosted ones with their keys from the environment, see
//! [`crate::hosted`]); `elevenlabs` needs a table (its agent id). The route `default` (`echo`
//! alone) exists unless the configuration defines it.
//!
//! # Ordering a route
//!
//! A route's [`RoutePolicy`] orders its providers for each new session:
//!
//! - `failover` (default): as listed;
//! - `weighted`: the first is drawn at random by the route's `weights` (among the providers not
//!   cooling down), the others follow as listed;
//! - `lowest-latency`: by the smoothed connect plus first-response latency of
//!   [`crate::health`], providers never measured first (so that each gets measured), then the
//!   fastest.
//!
//! Then health applies to every policy: providers whose circuit breaker is open (cooling down
//! after repeated failures) move to the end, in the same order. A route is never made
//! unroutable by health: if all are cooling down, they are tried in the policy's order. A
//! caller that names a provider gets that provider alone, whatever its health.
//!
//! [`Router::resolve`] reads the clock and draws the random number; [`Router::resolve_at`]
//! takes both, for deterministic tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use voxroute_actors::protocol::RouteTarget;
use voxroute_actors::provider::{ProviderKind, ProviderSpec};
use voxroute_codecs::SampleRate;

use crate::health::{Health, HealthConfig};
use crate::hosted::{self, Hosted, HostedOptions, ProviderEnv};

/// Name of the built-in echo provider.
pub const ECHO: &str = "echo";

/// Name of the route used when a caller names neither a provider nor a route, unless
/// `default_route` says otherwise.
pub const DEFAULT_ROUTE: &str = "default";

/// Rate the echo provider runs at: 16 kHz, so that echo exercises the resampler on every
/// transport (telephony is 8 kHz, WebRTC 48 kHz).
pub const ECHO_SAMPLE_RATE_HZ: u32 = 16_000;

/// One `[providers.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// What speaks at the other end: `echo`, `ws-pcm`, `openai`, `deepgram`, `elevenlabs` or
    /// `gemini`.
    pub kind: ProviderKindName,
    /// `ws-pcm`: the model's `ws://` or `wss://` URL (required). Hosted kinds: the base URL
    /// (`scheme://host[:port]`) to which voxroute appends the provider's path; beats the
    /// `VOXROUTE_*_URL` variable.
    #[serde(default)]
    pub url: Option<String>,
    /// PCM16 rate of the provider's audio, in Hz (`echo`, `ws-pcm`). Default: 16000. Hosted
    /// kinds have fixed rates.
    #[serde(default)]
    pub sample_rate_hz: Option<u32>,
    /// Model (openai, deepgram, gemini).
    #[serde(default)]
    pub model: Option<String>,
    /// Voice (openai; gemini's voice name; elevenlabs' voice id).
    #[serde(default)]
    pub voice: Option<String>,
    /// System instructions (openai, gemini; elevenlabs' prompt override).
    #[serde(default)]
    pub instructions: Option<String>,
    /// Language code (deepgram, elevenlabs).
    #[serde(default)]
    pub language: Option<String>,
    /// ElevenLabs agent id (required for elevenlabs).
    #[serde(default)]
    pub agent_id: Option<String>,
}

impl ProviderConfig {
    /// A table of `kind` with every optional key unset.
    pub fn of_kind(kind: ProviderKindName) -> Self {
        ProviderConfig {
            kind,
            url: None,
            sample_rate_hz: None,
            model: None,
            voice: None,
            instructions: None,
            language: None,
            agent_id: None,
        }
    }

    fn hosted_options(&self) -> HostedOptions {
        HostedOptions {
            url: self.url.clone(),
            model: self.model.clone(),
            voice: self.voice.clone(),
            instructions: self.instructions.clone(),
            language: self.language.clone(),
            agent_id: self.agent_id.clone(),
        }
    }

    /// The hosted-provider keys that are set, by name (for kinds that take none).
    fn set_hosted_keys(&self) -> impl Iterator<Item = &'static str> + '_ {
        [
            ("model", self.model.is_some()),
            ("voice", self.voice.is_some()),
            ("instructions", self.instructions.is_some()),
            ("language", self.language.is_some()),
            ("agent_id", self.agent_id.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
    }
}

/// The provider kinds a configuration may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKindName {
    /// The built-in echo.
    Echo,
    /// A self-hosted model speaking PCM16 binary frames over a WebSocket.
    WsPcm,
    /// OpenAI Realtime.
    #[serde(rename = "openai")]
    OpenAi,
    /// Deepgram live transcription.
    Deepgram,
    /// ElevenLabs Agents.
    #[serde(rename = "elevenlabs")]
    ElevenLabs,
    /// Gemini Live.
    Gemini,
}

impl ProviderKindName {
    fn hosted(self) -> Option<Hosted> {
        match self {
            ProviderKindName::Echo | ProviderKindName::WsPcm => None,
            ProviderKindName::OpenAi => Some(Hosted::OpenAi),
            ProviderKindName::Deepgram => Some(Hosted::Deepgram),
            ProviderKindName::ElevenLabs => Some(Hosted::ElevenLabs),
            ProviderKindName::Gemini => Some(Hosted::Gemini),
        }
    }
}

/// One `[routes.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Provider names, in order of preference: a session starts on the first (as the policy
    /// orders them) and fails over to the next ones.
    pub providers: Vec<String>,
    /// How the providers are ordered for each session. Default `failover`.
    #[serde(default)]
    pub policy: RoutePolicy,
    /// `weighted` only: one non-negative weight per provider, in the same order; at least one
    /// above zero.
    #[serde(default)]
    pub weights: Option<Vec<u32>>,
}

impl RouteConfig {
    /// A `failover` route over `providers`.
    pub fn failover(providers: Vec<String>) -> Self {
        RouteConfig {
            providers,
            policy: RoutePolicy::Failover,
            weights: None,
        }
    }
}

/// How a route orders its providers for a new session (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutePolicy {
    /// In the order listed.
    #[default]
    Failover,
    /// The first drawn by weight, the rest as listed.
    Weighted,
    /// By smoothed measured latency, unmeasured providers first.
    LowestLatency,
}

/// A configuration that cannot route, or a caller's request that names nothing routable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoutingError {
    /// A caller (or a route) named a provider that is not configured.
    #[error("unknown provider `{0}`")]
    UnknownProvider(String),
    /// A caller named a route that is not configured.
    #[error("unknown route `{0}`")]
    UnknownRoute(String),
    /// A route lists no provider.
    #[error("route `{0}` lists no provider")]
    EmptyRoute(String),
    /// A provider table is incomplete or wrong.
    #[error("provider `{name}`: {problem}")]
    BadProvider {
        /// The provider's name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A route table is inconsistent (weights).
    #[error("route `{name}`: {problem}")]
    BadRoute {
        /// The route's name.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

/// What a caller's request resolved to: the candidates in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The route, when the caller asked for one (or got the default).
    pub route: Option<String>,
    /// The provider to connect to first.
    pub provider: ProviderSpec,
    /// The providers to fail over to, in order (empty for a caller that named a provider).
    pub fallbacks: Vec<ProviderSpec>,
}

impl Resolved {
    /// Every candidate, in order: [`provider`](Self::provider), then the fallbacks.
    pub fn candidates(&self) -> impl Iterator<Item = &ProviderSpec> {
        std::iter::once(&self.provider).chain(&self.fallbacks)
    }
}

/// A validated route.
#[derive(Debug, Clone)]
struct Route {
    /// Provider names as listed (non-empty, all known).
    providers: Vec<String>,
    policy: RoutePolicy,
    /// One per provider for `weighted` (at least one above zero); empty otherwise.
    weights: Vec<u32>,
}

/// The validated providers and routes, and the provider health shared by every session (a
/// clone shares it too).
#[derive(Debug, Clone)]
pub struct Router {
    providers: BTreeMap<String, ProviderSpec>,
    routes: BTreeMap<String, Route>,
    default_route: String,
    health: Arc<Health>,
}

impl Router {
    /// Validates the configured providers and routes.
    ///
    /// # Errors
    /// [`RoutingError`] naming the first problem found.
    pub fn new(
        providers: &BTreeMap<String, ProviderConfig>,
        routes: &BTreeMap<String, RouteConfig>,
        default_route: &str,
        env: &ProviderEnv,
    ) -> Result<Self, RoutingError> {
        let mut specs = BTreeMap::new();
        specs.insert(
            ECHO.to_owned(),
            ProviderSpec {
                name: ECHO.to_owned(),
                sample_rate: SampleRate::HZ_16000,
                output_sample_rate: SampleRate::HZ_16000,
                kind: ProviderKind::Echo,
            },
        );
        for kind in Hosted::ALL.into_iter().filter(|k| k.is_builtin()) {
            let config = ProviderConfig::of_kind(match kind {
                Hosted::OpenAi => ProviderKindName::OpenAi,
                Hosted::Deepgram => ProviderKindName::Deepgram,
                Hosted::ElevenLabs => ProviderKindName::ElevenLabs,
                Hosted::Gemini => ProviderKindName::Gemini,
            });
            specs.insert(
                kind.name().to_owned(),
                provider_spec(kind.name(), &config, env)?,
            );
        }
        for (name, config) in providers {
            specs.insert(name.clone(), provider_spec(name, config, env)?);
        }
        let mut route_map: BTreeMap<String, Route> = BTreeMap::new();
        for (name, route) in routes {
            route_map.insert(name.clone(), validate_route(name, route)?);
        }
        route_map
            .entry(DEFAULT_ROUTE.to_owned())
            .or_insert_with(|| Route {
                providers: vec![ECHO.to_owned()],
                policy: RoutePolicy::Failover,
                weights: Vec::new(),
            });
        for members in route_map.values() {
            if let Some(unknown) = members.providers.iter().find(|p| !specs.contains_key(*p)) {
                return Err(RoutingError::UnknownProvider(unknown.clone()));
            }
        }
        if !route_map.contains_key(default_route) {
            return Err(RoutingError::UnknownRoute(default_route.to_owned()));
        }
        Ok(Router {
            providers: specs,
            routes: route_map,
            default_route: default_route.to_owned(),
            health: Arc::new(Health::new(HealthConfig::default())),
        })
    }

    /// This router with a fresh health registry of `config` (the `[health]` table).
    pub fn with_health(mut self, config: HealthConfig) -> Self {
        self.health = Arc::new(Health::new(config));
        self
    }

    /// The provider health every session reports to and every resolution reads.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// What an OpenAI Realtime client's `model` (`GET /v1/realtime?model=NAME`) selects: the
    /// route of that name, else the provider of that name (routes first, so a route may
    /// take a provider's name to add failover to it). `None` for a name that is neither.
    pub fn target_for_model(&self, model: &str) -> Option<RouteTarget> {
        if self.routes.contains_key(model) {
            Some(RouteTarget::Route(model.to_owned()))
        } else if self.providers.contains_key(model) {
            Some(RouteTarget::Provider(model.to_owned()))
        } else {
            None
        }
    }

    /// The providers a caller's request leads to, in the order to try them, now.
    ///
    /// # Errors
    /// [`RoutingError::UnknownProvider`] or [`RoutingError::UnknownRoute`].
    pub fn resolve(&self, target: &RouteTarget) -> Result<Resolved, RoutingError> {
        self.resolve_at(target, Instant::now(), rand::random::<f64>())
    }

    /// [`resolve`](Self::resolve) at `now`, with `random` (uniform in `[0, 1)`) for the
    /// `weighted` draw.
    ///
    /// # Errors
    /// As [`resolve`](Self::resolve).
    pub fn resolve_at(
        &self,
        target: &RouteTarget,
        now: Instant,
        random: f64,
    ) -> Result<Resolved, RoutingError> {
        let route_name = match target {
            RouteTarget::Provider(name) => {
                let provider = self
                    .providers
                    .get(name)
                    .ok_or_else(|| RoutingError::UnknownProvider(name.clone()))?;
                return Ok(Resolved {
                    route: None,
                    provider: provider.clone(),
                    fallbacks: Vec::new(),
                });
            }
            RouteTarget::Route(name) => name.as_str(),
            RouteTarget::Default => self.default_route.as_str(),
        };
        let route = self
            .routes
            .get(route_name)
            .ok_or_else(|| RoutingError::UnknownRoute(route_name.to_owned()))?;
        let order = order_candidates(route, &self.health, now, random);
        let mut specs = order.into_iter().map(|i| {
            // Unwrap is OK because `new` checked every route member is a known provider.
            self.providers
                .get(&route.providers[i])
                .expect("route members are validated providers")
                .clone()
        });
        // Unwrap is OK because `new` refuses empty routes and the order is a permutation.
        let provider = specs.next().expect("a route has at least one provider");
        Ok(Resolved {
            route: Some(route_name.to_owned()),
            provider,
            fallbacks: specs.collect(),
        })
    }
}

/// Checks one route table.
fn validate_route(name: &str, route: &RouteConfig) -> Result<Route, RoutingError> {
    let bad = |problem: &str| RoutingError::BadRoute {
        name: name.to_owned(),
        problem: problem.to_owned(),
    };
    if route.providers.is_empty() {
        return Err(RoutingError::EmptyRoute(name.to_owned()));
    }
    let weights = match (route.policy, &route.weights) {
        (RoutePolicy::Weighted, Some(weights)) => {
            if weights.len() != route.providers.len() {
                return Err(bad(
                    "`weights` needs one weight per provider, in the same order",
                ));
            }
            if weights.iter().all(|&w| w == 0) {
                return Err(bad("at least one weight must be above zero"));
            }
            weights.clone()
        }
        (RoutePolicy::Weighted, None) => {
            return Err(bad("policy \"weighted\" needs `weights`"));
        }
        (_, Some(_)) => return Err(bad("`weights` applies to policy \"weighted\" only")),
        (_, None) => Vec::new(),
    };
    Ok(Route {
        providers: route.providers.clone(),
        policy: route.policy,
        weights,
    })
}

/// The indices of the route's providers in the order to try them at `now` (see the
/// [module docs](self)): the policy's order, then those cooling down moved to the end.
fn order_candidates(route: &Route, health: &Health, now: Instant, random: f64) -> Vec<usize> {
    let count = route.providers.len();
    let cooling: Vec<bool> = route
        .providers
        .iter()
        .map(|p| health.is_cooling_down(p, now))
        .collect();
    let mut order: Vec<usize> = (0..count).collect();
    match route.policy {
        RoutePolicy::Failover => {}
        RoutePolicy::Weighted => {
            // Draw among the providers not cooling down, if any has weight.
            let healthy_weight: u64 = (0..count)
                .filter(|&i| !cooling[i])
                .map(|i| u64::from(route.weights[i]))
                .sum();
            let eligible = |i: usize| healthy_weight == 0 || !cooling[i];
            if let Some(first) = weighted_pick(&route.weights, random, eligible) {
                order.remove(first);
                order.insert(0, first);
            }
        }
        RoutePolicy::LowestLatency => {
            let latency: Vec<Option<f64>> = route
                .providers
                .iter()
                .map(|p| health.latency_ms(p))
                .collect();
            // Stable: equal latencies (and the unmeasured) keep the listed order.
            order.sort_by(|&a, &b| match (latency[a], latency[b]) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Less,
                (Some(_), None) => std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => x.total_cmp(&y),
            });
        }
    }
    if cooling.iter().all(|&c| c) {
        return order;
    }
    // Stable partition: the healthy ones first, in order, then the ones cooling down.
    let (mut healthy, cooling_down): (Vec<usize>, Vec<usize>) =
        order.into_iter().partition(|&i| !cooling[i]);
    healthy.extend(cooling_down);
    healthy
}

/// The index drawn by `weights` among the `eligible` ones, for `random` in `[0, 1)`; `None` if
/// no eligible one has weight.
fn weighted_pick(weights: &[u32], random: f64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
    let total: u64 = (0..weights.len())
        .filter(|&i| eligible(i))
        .map(|i| u64::from(weights[i]))
        .sum();
    if total == 0 {
        return None;
    }
    // The point drawn, in whole weight units: [0, total).
    let point = ((random.clamp(0.0, 1.0) * total as f64) as u64).min(total - 1);
    let mut reached = 0u64;
    for (i, &weight) in weights.iter().enumerate() {
        if !eligible(i) || weight == 0 {
            continue;
        }
        reached += u64::from(weight);
        if point < reached {
            return Some(i);
        }
    }
    None
}

/// The spec of provider `name` from its table.
fn provider_spec(
    name: &str,
    config: &ProviderConfig,
    env: &ProviderEnv,
) -> Result<ProviderSpec, RoutingError> {
    let bad = |problem: &str| RoutingError::BadProvider {
        name: name.to_owned(),
        problem: problem.to_owned(),
    };
    let rate = |hz: u32| {
        SampleRate::new(hz)
            .map_err(|_| bad("sample_rate_hz must be 8000–96000 and a multiple of 50"))
    };
    if let Some(hosted) = config.kind.hosted() {
        if config.sample_rate_hz.is_some() {
            return Err(bad("sample_rate_hz is fixed by the provider; remove it"));
        }
        let kind = hosted::build(hosted, &config.hosted_options(), env).map_err(|p| bad(&p))?;
        let (in_hz, out_hz) = hosted.sample_rates_hz();
        return Ok(ProviderSpec {
            name: name.to_owned(),
            sample_rate: rate(in_hz)?,
            output_sample_rate: rate(out_hz)?,
            kind,
        });
    }
    if let Some(key) = config.set_hosted_keys().next() {
        return Err(bad(&format!("`{key}` applies to hosted providers only")));
    }
    let sample_rate = rate(config.sample_rate_hz.unwrap_or(ECHO_SAMPLE_RATE_HZ))?;
    let kind = match config.kind {
        ProviderKindName::WsPcm => {
            let url = config
                .url
                .clone()
                .ok_or_else(|| bad("ws-pcm needs a url"))?;
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(bad("url must start with ws:// or wss://"));
            }
            ProviderKind::WsPcm { url }
        }
        _ => {
            if config.url.is_some() {
                return Err(bad("echo takes no url"));
            }
            ProviderKind::Echo
        }
    };
    Ok(ProviderSpec {
        name: name.to_owned(),
        sample_rate,
        output_sample_rate: sample_rate,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws_pcm(url: &str) -> ProviderConfig {
        ProviderConfig {
            url: Some(url.into()),
            sample_rate_hz: Some(24_000),
            ..ProviderConfig::of_kind(ProviderKindName::WsPcm)
        }
    }

    fn new_router(
        providers: &BTreeMap<String, ProviderConfig>,
        routes: &BTreeMap<String, RouteConfig>,
        default_route: &str,
    ) -> Result<Router, RoutingError> {
        Router::new(providers, routes, default_route, &ProviderEnv::default())
    }

    #[test]
    fn hosted_providers_are_built_in_with_their_rates_and_tables_configure_them() {
        let router = new_router(&BTreeMap::new(), &BTreeMap::new(), DEFAULT_ROUTE).unwrap();
        let gemini = router
            .resolve(&RouteTarget::Provider("gemini".into()))
            .unwrap();
        assert_eq!(gemini.provider.sample_rate, SampleRate::HZ_16000);
        assert_eq!(gemini.provider.output_sample_rate, SampleRate::HZ_24000);
        let openai = router
            .resolve(&RouteTarget::Provider("openai".into()))
            .unwrap();
        assert_eq!(openai.provider.sample_rate, SampleRate::HZ_24000);
        assert!(
            router
                .resolve(&RouteTarget::Provider("deepgram".into()))
                .is_ok()
        );
        assert_eq!(
            router.resolve(&RouteTarget::Provider("elevenlabs".into())),
            Err(RoutingError::UnknownProvider("elevenlabs".into())),
            "elevenlabs needs a table with its agent id"
        );
        let agent = ProviderConfig {
            agent_id: Some("agent_1".into()),
            ..ProviderConfig::of_kind(ProviderKindName::ElevenLabs)
        };
        let providers = BTreeMap::from([("support-agent".to_owned(), agent)]);
        let router = new_router(&providers, &BTreeMap::new(), DEFAULT_ROUTE).unwrap();
        let resolved = router
            .resolve(&RouteTarget::Provider("support-agent".into()))
            .unwrap();
        assert!(matches!(
            resolved.provider.kind,
            ProviderKind::ElevenLabs(_)
        ));

        let with_rate = ProviderConfig {
            sample_rate_hz: Some(8_000),
            ..ProviderConfig::of_kind(ProviderKindName::OpenAi)
        };
        let providers = BTreeMap::from([("o".to_owned(), with_rate)]);
        assert!(new_router(&providers, &BTreeMap::new(), DEFAULT_ROUTE).is_err());
        let echo_with_model = ProviderConfig {
            model: Some("m".into()),
            ..ProviderConfig::of_kind(ProviderKindName::Echo)
        };
        let providers = BTreeMap::from([("e".to_owned(), echo_with_model)]);
        assert!(new_router(&providers, &BTreeMap::new(), DEFAULT_ROUTE).is_err());
    }

    #[test]
    fn defaults_route_to_echo() {
        let router = new_router(&BTreeMap::new(), &BTreeMap::new(), DEFAULT_ROUTE).unwrap();
        let resolved = router.resolve(&RouteTarget::Default).unwrap();
        assert_eq!(resolved.route.as_deref(), Some(DEFAULT_ROUTE));
        assert_eq!(resolved.provider.name, ECHO);
        assert_eq!(resolved.provider.sample_rate, SampleRate::HZ_16000);
    }

    #[test]
    fn providers_and_routes_resolve_and_unknowns_are_errors() {
        let providers = BTreeMap::from([("model".to_owned(), ws_pcm("ws://127.0.0.1:9/x"))]);
        let routes = BTreeMap::from([(
            "main".to_owned(),
            RouteConfig::failover(vec!["model".into(), ECHO.into()]),
        )]);
        let router = new_router(&providers, &routes, DEFAULT_ROUTE).unwrap();
        let resolved = router.resolve(&RouteTarget::Route("main".into())).unwrap();
        assert_eq!(resolved.provider.name, "model");
        assert_eq!(resolved.provider.sample_rate, SampleRate::HZ_24000);
        assert_eq!(
            router.resolve(&RouteTarget::Provider("nope".into())),
            Err(RoutingError::UnknownProvider("nope".into()))
        );
        assert_eq!(
            router.resolve(&RouteTarget::Route("nope".into())),
            Err(RoutingError::UnknownRoute("nope".into()))
        );
    }

    /// An OpenAI Realtime `model` names a route first, else a provider; anything else is
    /// refused (`None`).
    #[test]
    fn model_names_a_route_or_a_provider() {
        let providers = BTreeMap::from([("model".to_owned(), ws_pcm("ws://127.0.0.1:9/x"))]);
        let routes = BTreeMap::from([
            (
                "main".to_owned(),
                RouteConfig::failover(vec!["model".into(), ECHO.into()]),
            ),
            (ECHO.to_owned(), RouteConfig::failover(vec!["model".into()])),
        ]);
        let router = new_router(&providers, &routes, DEFAULT_ROUTE).unwrap();
        assert_eq!(
            router.target_for_model("main"),
            Some(RouteTarget::Route("main".into()))
        );
        assert_eq!(
            router.target_for_model("model"),
            Some(RouteTarget::Provider("model".into()))
        );
        // A route named like a provider wins.
        assert_eq!(
            router.target_for_model(ECHO),
            Some(RouteTarget::Route(ECHO.into()))
        );
        assert_eq!(router.target_for_model("gpt-realtime"), None);
        assert_eq!(router.target_for_model(""), None);
    }

    #[test]
    fn bad_configurations_are_refused_at_start() {
        let no_url = ProviderConfig {
            url: None,
            ..ws_pcm("")
        };
        let providers = BTreeMap::from([("model".to_owned(), no_url)]);
        assert!(matches!(
            new_router(&providers, &BTreeMap::new(), DEFAULT_ROUTE),
            Err(RoutingError::BadProvider { .. })
        ));
        let routes =
            BTreeMap::from([("r".to_owned(), RouteConfig::failover(vec!["ghost".into()]))]);
        assert_eq!(
            new_router(&BTreeMap::new(), &routes, DEFAULT_ROUTE).unwrap_err(),
            RoutingError::UnknownProvider("ghost".into())
        );
        assert_eq!(
            new_router(&BTreeMap::new(), &BTreeMap::new(), "missing").unwrap_err(),
            RoutingError::UnknownRoute("missing".into())
        );
        let bad_rate = ProviderConfig {
            sample_rate_hz: Some(44_123),
            ..ws_pcm("ws://x")
        };
        let providers = BTreeMap::from([("model".to_owned(), bad_rate)]);
        assert!(new_router(&providers, &BTreeMap::new(), DEFAULT_ROUTE).is_err());
    }

    /// Two ws-pcm providers `a`, `b` and `c`, and a route `r` over them with `policy`.
    fn three(policy: RoutePolicy, weights: Option<Vec<u32>>) -> Router {
        let providers = BTreeMap::from([
            ("a".to_owned(), ws_pcm("ws://127.0.0.1:9/a")),
            ("b".to_owned(), ws_pcm("ws://127.0.0.1:9/b")),
            ("c".to_owned(), ws_pcm("ws://127.0.0.1:9/c")),
        ]);
        let routes = BTreeMap::from([(
            "r".to_owned(),
            RouteConfig {
                providers: vec!["a".into(), "b".into(), "c".into()],
                policy,
                weights,
            },
        )]);
        new_router(&providers, &routes, DEFAULT_ROUTE).unwrap()
    }

    fn order(router: &Router, now: Instant, random: f64) -> Vec<String> {
        router
            .resolve_at(&RouteTarget::Route("r".into()), now, random)
            .unwrap()
            .candidates()
            .map(|p| p.name.clone())
            .collect()
    }

    /// `failover` keeps the listed order; a provider cooling down goes last; when all cool
    /// down the listed order is kept; a named provider comes alone, with no fallbacks.
    #[test]
    fn failover_order_with_health() {
        let t0 = Instant::now();
        let router = three(RoutePolicy::Failover, None);
        assert_eq!(order(&router, t0, 0.0), ["a", "b", "c"]);
        let threshold = router.health().config().failure_threshold;
        for _ in 0..threshold {
            router.health().report_failure("a", t0);
        }
        assert_eq!(order(&router, t0, 0.0), ["b", "c", "a"]);
        for name in ["b", "c"] {
            for _ in 0..threshold {
                router.health().report_failure(name, t0);
            }
        }
        assert_eq!(order(&router, t0, 0.0), ["a", "b", "c"], "never unroutable");
        // After the cool-down every breaker is half-open: tried in place again.
        let later = t0 + router.health().config().cool_down();
        assert_eq!(order(&router, later, 0.0), ["a", "b", "c"]);
        router.health().report_failure("a", later);
        assert_eq!(order(&router, later, 0.0), ["b", "c", "a"]);

        let named = router.resolve(&RouteTarget::Provider("a".into())).unwrap();
        assert_eq!(
            (named.provider.name.as_str(), named.fallbacks.len()),
            ("a", 0)
        );
    }

    /// `weighted` draws the first by weight (the random number is passed in) and lists the
    /// rest in order; a zero weight is never drawn; a provider cooling down is not drawn while
    /// another has weight.
    #[test]
    fn weighted_draws_the_first_by_weight() {
        let t0 = Instant::now();
        let router = three(RoutePolicy::Weighted, Some(vec![1, 0, 3]));
        assert_eq!(order(&router, t0, 0.0), ["a", "b", "c"]);
        assert_eq!(order(&router, t0, 0.24), ["a", "b", "c"]);
        assert_eq!(order(&router, t0, 0.25), ["c", "a", "b"]);
        assert_eq!(order(&router, t0, 0.999), ["c", "a", "b"]);
        // Over many draws the shares follow the weights.
        let firsts_c = (0..1_000)
            .filter(|i| order(&router, t0, f64::from(*i) / 1_000.0)[0] == "c")
            .count();
        assert_eq!(firsts_c, 750);
        for _ in 0..router.health().config().failure_threshold {
            router.health().report_failure("c", t0);
        }
        assert_eq!(order(&router, t0, 0.9), ["a", "b", "c"]);
    }

    /// `lowest-latency` puts unmeasured providers first, then the fastest by smoothed latency.
    #[test]
    fn lowest_latency_orders_by_measure_unmeasured_first() {
        let t0 = Instant::now();
        let router = three(RoutePolicy::LowestLatency, None);
        assert_eq!(order(&router, t0, 0.0), ["a", "b", "c"]);
        let health = router.health();
        health.report_connected("a", std::time::Duration::from_millis(300));
        health.report_connected("c", std::time::Duration::from_millis(100));
        assert_eq!(order(&router, t0, 0.0), ["b", "c", "a"]);
        health.report_connected("b", std::time::Duration::from_millis(200));
        health.report_first_response("b", std::time::Duration::from_millis(150));
        assert_eq!(order(&router, t0, 0.0), ["c", "a", "b"]);
    }

    /// Weights must match the providers and belong to `weighted` routes only.
    #[test]
    fn bad_route_policies_are_refused_at_start() {
        let routes = |policy, weights| {
            BTreeMap::from([(
                "r".to_owned(),
                RouteConfig {
                    providers: vec![ECHO.into(), ECHO.into()],
                    policy,
                    weights,
                },
            )])
        };
        for (policy, weights) in [
            (RoutePolicy::Weighted, None),
            (RoutePolicy::Weighted, Some(vec![1])),
            (RoutePolicy::Weighted, Some(vec![0, 0])),
            (RoutePolicy::Failover, Some(vec![1, 1])),
        ] {
            let result = new_router(&BTreeMap::new(), &routes(policy, weights), DEFAULT_ROUTE);
            assert!(
                matches!(result, Err(RoutingError::BadRoute { .. })),
                "{result:?}"
            );
        }
        assert!(
            new_router(
                &BTreeMap::new(),
                &routes(RoutePolicy::Weighted, Some(vec![0, 2])),
                DEFAULT_ROUTE
            )
            .is_ok()
        );
    }
}
