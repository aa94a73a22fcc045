//! Which provider answers a session: the providers and routes of the configuration, and
//! [`Router::resolve`], which turns what a caller asked for (a provider, a route, or nothing)
//! into a [`ProviderSpec`].
//!
//! Built once at start from the configuration and validated then: a route naming an unknown
//! provider, or a `ws-pcm` provider without a URL, stops `voxroute serve` with a clear error
//! instead of failing calls later. The built-in provider `echo` always exists, and so does the
//! route `default` (`echo` alone) unless the configuration defines it.
//!
//! This release uses the first provider of a route; ordering policies and mid-call failover
//! across a route's providers come with the provider adapters (issue #4).

use std::collections::BTreeMap;

use serde::Deserialize;
use voxroute_actors::protocol::RouteTarget;
use voxroute_actors::provider::{ProviderKind, ProviderSpec};
use voxroute_codecs::SampleRate;

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
    /// What speaks at the other end: `echo` or `ws-pcm`.
    pub kind: ProviderKindName,
    /// `ws://` or `wss://` URL (`ws-pcm` only).
    #[serde(default)]
    pub url: Option<String>,
    /// PCM16 rate of the provider's audio, in Hz. Default: 16000.
    #[serde(default)]
    pub sample_rate_hz: Option<u32>,
}

/// The provider kinds a configuration may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKindName {
    /// The built-in echo.
    Echo,
    /// A self-hosted model speaking PCM16 binary frames over a WebSocket.
    WsPcm,
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
    ) -> Result<Self, RoutingError> {
        let mut specs = BTreeMap::new();
        specs.insert(
            ECHO.to_owned(),
            ProviderSpec {
                name: ECHO.to_owned(),
                sample_rate: SampleRate::HZ_16000,
                kind: ProviderKind::Echo,
            },
        );
        for (name, config) in providers {
            let bad = |problem: &str| RoutingError::BadProvider {
                name: name.clone(),
                problem: problem.to_owned(),
            };
            let rate_hz = config.sample_rate_hz.unwrap_or(ECHO_SAMPLE_RATE_HZ);
            let sample_rate = SampleRate::new(rate_hz)
                .map_err(|_| bad("sample_rate_hz must be 8000–96000 and a multiple of 50"))?;
            let kind = match config.kind {
                ProviderKindName::Echo => {
                    if config.url.is_some() {
                        return Err(bad("echo takes no url"));
                    }
                    ProviderKind::Echo
                }
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
            };
            specs.insert(
                name.clone(),
                ProviderSpec {
                    name: name.clone(),
                    sample_rate,
                    kind,
                },
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ws_pcm(url: &str) -> ProviderConfig {
        ProviderConfig {
            kind: ProviderKindName::WsPcm,
            url: Some(url.into()),
            sample_rate_hz: Some(24_000),
        }
    }

    #[test]
    fn defaults_route_to_echo() {
        let router = Router::new(&BTreeMap::new(), &BTreeMap::new(), DEFAULT_ROUTE).unwrap();
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
        let router = Router::new(&providers, &routes, DEFAULT_ROUTE).unwrap();
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
            Router::new(&providers, &BTreeMap::new(), DEFAULT_ROUTE),
            Err(RoutingError::BadProvider { .. })
        ));
        let routes = BTreeMap::from([(
            "r".to_owned(),
            RouteConfig {
                providers: vec!["ghost".into()],
            },
        )]);
        assert_eq!(
            Router::new(&BTreeMap::new(), &routes, DEFAULT_ROUTE).unwrap_err(),
            RoutingError::UnknownProvider("ghost".into())
        );
        assert_eq!(
            Router::new(&BTreeMap::new(), &BTreeMap::new(), "missing").unwrap_err(),
            RoutingError::UnknownRoute("missing".into())
        );
        let bad_rate = ProviderConfig {
            sample_rate_hz: Some(44_123),
            ..ws_pcm("ws://x")
        };
        let providers = BTreeMap::from([("model".to_owned(), bad_rate)]);
        assert!(Router::new(&providers, &BTreeMap::new(), DEFAULT_ROUTE).is_err());
    }
}
