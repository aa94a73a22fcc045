//! The hosted providers (OpenAI Realtime, Deepgram, ElevenLabs Agents, Gemini Live): their
//! environment variables, default endpoints and fixed audio rates, and the adapter settings
//! built from a `[providers.NAME]` table plus the environment.
//!
//! # Secrets and base URLs
//!
//! API keys come only from the environment (`OPENAI_API_KEY`, `DEEPGRAM_API_KEY`,
//! `ELEVENLABS_API_KEY`, `GEMINI_API_KEY`), read once at start into [`ProviderEnv`], whose
//! `Debug` hides them. A base URL is `scheme://host[:port][/prefix]` (`ws://` or `wss://`);
//! voxroute appends the provider's own path (`/v1/realtime`, `/v1/listen`,
//! `/v1/convai/conversation`, Gemini's `BidiGenerateContent` path). It comes from the table's
//! `url`, else the `VOXROUTE_*_URL` variable, else the provider's public endpoint, so a stand-in
//! or a proxy serving the real paths is one variable away.
//!
//! # What callers must keep
//!
//! Build a [`ProviderEnv`] once ([`ProviderEnv::from_env`] in the server, a literal in tests)
//! and pass it to [`crate::routing::Router::new`]; nothing else here reads the environment.

use std::fmt;

use voxroute_actors::provider::{
    ProviderKind, deepgram::DeepgramSettings, elevenlabs::ElevenLabsSettings,
    gemini::GeminiSettings, openai::OpenAiSettings,
};
use voxroute_actors::provider::{deepgram, elevenlabs, gemini, openai};

/// A hosted provider kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hosted {
    /// OpenAI Realtime (speech to speech).
    OpenAi,
    /// Deepgram live transcription (speech to text; no audio back).
    Deepgram,
    /// ElevenLabs Agents conversation (speech to speech).
    ElevenLabs,
    /// Gemini Live (speech to speech).
    Gemini,
}

impl Hosted {
    /// Every hosted kind.
    pub const ALL: [Hosted; 4] = [
        Hosted::OpenAi,
        Hosted::Deepgram,
        Hosted::ElevenLabs,
        Hosted::Gemini,
    ];

    /// The provider name callers use for the built-in provider of this kind, and the `kind`
    /// of a table.
    pub const fn name(self) -> &'static str {
        match self {
            Hosted::OpenAi => "openai",
            Hosted::Deepgram => "deepgram",
            Hosted::ElevenLabs => "elevenlabs",
            Hosted::Gemini => "gemini",
        }
    }

    /// The variable holding the API key.
    pub const fn key_var(self) -> &'static str {
        match self {
            Hosted::OpenAi => "OPENAI_API_KEY",
            Hosted::Deepgram => "DEEPGRAM_API_KEY",
            Hosted::ElevenLabs => "ELEVENLABS_API_KEY",
            Hosted::Gemini => "GEMINI_API_KEY",
        }
    }

    /// The variable overriding the base URL.
    pub const fn url_var(self) -> &'static str {
        match self {
            Hosted::OpenAi => "VOXROUTE_OPENAI_URL",
            Hosted::Deepgram => "VOXROUTE_DEEPGRAM_URL",
            Hosted::ElevenLabs => "VOXROUTE_ELEVENLABS_URL",
            Hosted::Gemini => "VOXROUTE_GEMINI_URL",
        }
    }

    /// The public base URL.
    pub const fn default_base_url(self) -> &'static str {
        match self {
            Hosted::OpenAi => "wss://api.openai.com",
            Hosted::Deepgram => deepgram::DEFAULT_URL,
            Hosted::ElevenLabs => "wss://api.elevenlabs.io",
            Hosted::Gemini => gemini::DEFAULT_URL,
        }
    }

    /// The PCM16 rates the provider takes and gives, in Hz: (input, output).
    pub const fn sample_rates_hz(self) -> (u32, u32) {
        match self {
            Hosted::OpenAi => (openai::INPUT_SAMPLE_RATE_HZ, openai::OUTPUT_SAMPLE_RATE_HZ),
            Hosted::Deepgram => (
                deepgram::INPUT_SAMPLE_RATE_HZ,
                deepgram::OUTPUT_SAMPLE_RATE_HZ,
            ),
            Hosted::ElevenLabs => (
                elevenlabs::INPUT_SAMPLE_RATE_HZ,
                elevenlabs::OUTPUT_SAMPLE_RATE_HZ,
            ),
            Hosted::Gemini => (gemini::INPUT_SAMPLE_RATE_HZ, gemini::OUTPUT_SAMPLE_RATE_HZ),
        }
    }

    /// Whether a caller may use the kind without a table (ElevenLabs needs an `agent_id`).
    pub const fn is_builtin(self) -> bool {
        !matches!(self, Hosted::ElevenLabs)
    }
}

/// What the environment says about one hosted provider.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HostedEnv {
    /// The API key, if set and not empty.
    pub api_key: Option<String>,
    /// The base-URL override, if set and not empty.
    pub base_url: Option<String>,
}

impl fmt::Debug for HostedEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostedEnv")
            .field("api_key", &self.api_key.as_ref().map(|_| "<hidden>"))
            .field("base_url", &self.base_url)
            .finish()
    }
}

/// The hosted providers' keys and base URLs, read once at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderEnv {
    /// `OPENAI_API_KEY`, `VOXROUTE_OPENAI_URL`.
    pub openai: HostedEnv,
    /// `DEEPGRAM_API_KEY`, `VOXROUTE_DEEPGRAM_URL`.
    pub deepgram: HostedEnv,
    /// `ELEVENLABS_API_KEY`, `VOXROUTE_ELEVENLABS_URL`.
    pub elevenlabs: HostedEnv,
    /// `GEMINI_API_KEY`, `VOXROUTE_GEMINI_URL`.
    pub gemini: HostedEnv,
}

impl ProviderEnv {
    /// Reads the variables of every hosted provider; empty values count as unset.
    pub fn from_env() -> Self {
        let read = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let of = |kind: Hosted| HostedEnv {
            api_key: read(kind.key_var()),
            base_url: read(kind.url_var()),
        };
        ProviderEnv {
            openai: of(Hosted::OpenAi),
            deepgram: of(Hosted::Deepgram),
            elevenlabs: of(Hosted::ElevenLabs),
            gemini: of(Hosted::Gemini),
        }
    }

    /// The entry of one kind.
    pub fn get(&self, kind: Hosted) -> &HostedEnv {
        match kind {
            Hosted::OpenAi => &self.openai,
            Hosted::Deepgram => &self.deepgram,
            Hosted::ElevenLabs => &self.elevenlabs,
            Hosted::Gemini => &self.gemini,
        }
    }
}

/// The optional keys of a hosted provider's table, each for the kinds that have a place for
/// it; [`build`] refuses a key the kind cannot use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostedOptions {
    /// Base URL (beats the environment's).
    pub url: Option<String>,
    /// Model (OpenAI, Deepgram, Gemini).
    pub model: Option<String>,
    /// Voice (OpenAI; Gemini's voice name; ElevenLabs' voice id).
    pub voice: Option<String>,
    /// System instructions (OpenAI, Gemini; ElevenLabs' prompt override).
    pub instructions: Option<String>,
    /// Language code (Deepgram, ElevenLabs).
    pub language: Option<String>,
    /// Agent id (ElevenLabs, required there).
    pub agent_id: Option<String>,
}

/// Builds the adapter settings of a `kind` provider from its table and the environment.
///
/// # Errors
/// What is wrong, naming the key: an option the kind has no place for, a missing `agent_id`,
/// a base URL that is not `ws://` or `wss://`.
pub fn build(
    kind: Hosted,
    options: &HostedOptions,
    env: &ProviderEnv,
) -> Result<ProviderKind, String> {
    let env = env.get(kind);
    let base = options
        .url
        .as_deref()
        .or(env.base_url.as_deref())
        .unwrap_or(kind.default_base_url());
    if !(base.starts_with("ws://") || base.starts_with("wss://")) {
        return Err("url must start with ws:// or wss://".to_owned());
    }
    let base = base.trim_end_matches('/').to_owned();
    let api_key = env.api_key.clone();
    let refuse = |key: &str, value: &Option<String>| match value {
        Some(_) => Err(format!("`{key}` does not apply to kind {}", kind.name())),
        None => Ok(()),
    };
    Ok(match kind {
        Hosted::OpenAi => {
            refuse("language", &options.language)?;
            refuse("agent_id", &options.agent_id)?;
            let defaults = OpenAiSettings::default();
            ProviderKind::OpenAi(Box::new(OpenAiSettings {
                base_url: format!("{base}/v1/realtime"),
                api_key,
                model: options.model.clone().unwrap_or(defaults.model),
                voice: options.voice.clone().unwrap_or(defaults.voice),
                instructions: options.instructions.clone(),
                transcription_model: defaults.transcription_model,
                reply: defaults.reply,
            }))
        }
        Hosted::Deepgram => {
            refuse("voice", &options.voice)?;
            refuse("instructions", &options.instructions)?;
            refuse("agent_id", &options.agent_id)?;
            let mut settings = DeepgramSettings::new(api_key);
            settings.base_url = base;
            if let Some(model) = &options.model {
                settings.model = model.clone();
            }
            settings.language = options.language.clone();
            ProviderKind::Deepgram(Box::new(settings))
        }
        Hosted::ElevenLabs => {
            refuse("model", &options.model)?;
            let agent_id = options
                .agent_id
                .clone()
                .ok_or_else(|| "elevenlabs needs an `agent_id`".to_owned())?;
            let mut settings = ElevenLabsSettings::new(agent_id);
            settings.base_url = format!("{base}/v1/convai/conversation");
            settings.api_key = api_key;
            settings.prompt = options.instructions.clone();
            settings.language = options.language.clone();
            settings.voice_id = options.voice.clone();
            ProviderKind::ElevenLabs(Box::new(settings))
        }
        Hosted::Gemini => {
            refuse("language", &options.language)?;
            refuse("agent_id", &options.agent_id)?;
            let mut settings = GeminiSettings::new(api_key);
            settings.base_url = base;
            if let Some(model) = &options.model {
                settings.model = model.clone();
            }
            settings.voice_name = options.voice.clone();
            settings.system_instruction = options.instructions.clone();
            ProviderKind::Gemini(Box::new(settings))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(kind: Hosted, key: &str, url: Option<&str>) -> ProviderEnv {
        let mut env = ProviderEnv::default();
        let entry = HostedEnv {
            api_key: Some(key.into()),
            base_url: url.map(Into::into),
        };
        match kind {
            Hosted::OpenAi => env.openai = entry,
            Hosted::Deepgram => env.deepgram = entry,
            Hosted::ElevenLabs => env.elevenlabs = entry,
            Hosted::Gemini => env.gemini = entry,
        }
        env
    }

    #[test]
    fn base_url_comes_from_table_then_env_then_default_and_gets_the_path() {
        let env = env_with(Hosted::OpenAi, "sk-1", Some("ws://127.0.0.1:9090/"));
        let ProviderKind::OpenAi(s) =
            build(Hosted::OpenAi, &HostedOptions::default(), &env).unwrap()
        else {
            panic!("openai settings expected");
        };
        assert_eq!(s.base_url, "ws://127.0.0.1:9090/v1/realtime");
        assert_eq!(s.api_key.as_deref(), Some("sk-1"));
        let table = HostedOptions {
            url: Some("wss://proxy.example".into()),
            model: Some("gpt-x".into()),
            ..HostedOptions::default()
        };
        let ProviderKind::OpenAi(s) = build(Hosted::OpenAi, &table, &env).unwrap() else {
            panic!("openai settings expected");
        };
        assert_eq!(
            (s.base_url.as_str(), s.model.as_str()),
            ("wss://proxy.example/v1/realtime", "gpt-x")
        );
        let ProviderKind::Deepgram(s) = build(
            Hosted::Deepgram,
            &HostedOptions::default(),
            &ProviderEnv::default(),
        )
        .unwrap() else {
            panic!("deepgram settings expected");
        };
        assert_eq!(s.base_url, deepgram::DEFAULT_URL);
        assert_eq!(s.api_key, None);
    }

    #[test]
    fn options_a_kind_cannot_use_are_refused() {
        let env = ProviderEnv::default();
        let with_agent = HostedOptions {
            agent_id: Some("a".into()),
            ..HostedOptions::default()
        };
        assert!(
            build(Hosted::OpenAi, &with_agent, &env)
                .unwrap_err()
                .contains("agent_id")
        );
        assert!(
            build(Hosted::ElevenLabs, &HostedOptions::default(), &env)
                .unwrap_err()
                .contains("agent_id")
        );
        let ProviderKind::ElevenLabs(s) = build(Hosted::ElevenLabs, &with_agent, &env).unwrap()
        else {
            panic!("elevenlabs settings expected");
        };
        assert_eq!(s.base_url, "wss://api.elevenlabs.io/v1/convai/conversation");
        let http = HostedOptions {
            url: Some("https://api.openai.com".into()),
            ..HostedOptions::default()
        };
        assert!(
            build(Hosted::Gemini, &http, &env)
                .unwrap_err()
                .contains("ws://")
        );
    }

    #[test]
    fn debug_hides_keys() {
        let env = env_with(Hosted::Gemini, "AIza-SECRET", None);
        assert!(!format!("{env:?}").contains("SECRET"));
    }
}
