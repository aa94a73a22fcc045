//! Which provider answers a session: the providers and routes of the configuration, and
//! [`Router::resolve`], which turns what a caller asked for (a provider, a route, or nothing)
//! into a [`ProviderSpec`].
//!
//! Built once at start from the configuration and validated then: a route naming an unknown
//! provider, or a `ws-pcm` provider without a URL, stops `voxroute serve` with a clear error
//! instead of failing calls later. The built-in providers `echo`, `openai`, `deepgram` and
//! `gemini` always exist (the hosted ones with their keys from the environment, see
//! [`crate::hosted`]); `elevenlabs` needs a table (its agent id). The route `default` (`echo`
//! alone) exists unless the configuration defines it.
//!
//! This release uses the first provider of a route; ordering policies and mid-call failover
//! across a route's providers come with the provider adapters (issue #4).

use std::collections::BTreeMap;

use serde::Deserialize;
use voxroute_actors::protocol::RouteTarget;
use voxroute_actors::provider::{ProviderKind, ProviderSpec};
use voxroute_codecs::SampleRate;

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
    /// Provider names, in order of preference.
    pub providers: Vec<String>,
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
}

/// What a caller's request resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The route, when the caller asked for one (or got the default).
    pub route: Option<String>,
    /// The provider to connect to.
    pub provider: ProviderSpec,
}

/// The validated providers and routes.
#[derive(Debug, Clone)]
pub struct Router {
    providers: BTreeMap<String, ProviderSpec>,
    routes: BTreeMap<String, Vec<String>>,
    default_route: String,
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
        let mut route_map: BTreeMap<String, Vec<String>> = routes
            .iter()
            .map(|(name, route)| (name.clone(), route.providers.clone()))
            .collect();
        route_map
            .entry(DEFAULT_ROUTE.to_owned())
            .or_insert_with(|| vec![ECHO.to_owned()]);
        for (name, members) in &route_map {
            if members.is_empty() {
                return Err(RoutingError::EmptyRoute(name.clone()));
            }
            if let Some(unknown) = members.iter().find(|p| !specs.contains_key(*p)) {
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
        })
    }

    /// The provider a caller's request leads to.
    ///
    /// # Errors
    /// [`RoutingError::UnknownProvider`] or [`RoutingError::UnknownRoute`].
    pub fn resolve(&self, target: &RouteTarget) -> Result<Resolved, RoutingError> {
        let (route, provider) = match target {
            RouteTarget::Provider(name) => (None, name.as_str()),
            RouteTarget::Route(name) => (Some(name.as_str()), self.first_of(name)?),
            RouteTarget::Default => (
                Some(self.default_route.as_str()),
                self.first_of(&self.default_route)?,
            ),
        };
        let provider = self
            .providers
            .get(provider)
            .ok_or_else(|| RoutingError::UnknownProvider(provider.to_owned()))?;
        Ok(Resolved {
            route: route.map(str::to_owned),
            provider: provider.clone(),
        })
    }

    fn first_of(&self, route: &str) -> Result<&str, RoutingError> {
        self.routes
            .get(route)
            .and_then(|providers| providers.first())
            .map(String::as_str)
            .ok_or_else(|| RoutingError::UnknownRoute(route.to_owned()))
    }
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
            RouteConfig {
                providers: vec!["model".into(), ECHO.into()],
            },
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
        let routes = BTreeMap::from([(
            "r".to_owned(),
            RouteConfig {
                providers: vec!["ghost".into()],
            },
        )]);
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
}
