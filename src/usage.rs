//! Metering for callers: the price table of the configuration (`[prices.PROVIDER]`) and
//! `GET /v1/usage`, a key's own usage per UTC day and provider with an estimated cost.
//!
//! What it owns: reading the request's `from`/`to` dates, turning stored milliseconds into
//! seconds and dollars, and the response's JSON shape. What it does not do: count audio (the
//! session core does, per provider segment), store it (`crate::store`, table
//! `session_usage`), or check the key: the caller's key is checked by the edge's own check
//! ([`crate::edge::caller_key`]), the same one the WebSocket upgrades use, so a key that may
//! not stream may not read usage either.
//!
//! Callers must keep: costs are estimates from the price table as configured *now* (a price
//! change applies to past usage too, when it is read), in US dollars, rounded to a millionth
//! of a dollar. A session's usage counts on the UTC day it started, once it has ended.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};

use crate::edge::{AppState, caller_key, problem};
use crate::store::{DailyUsage, KeyUsage};

/// Days reported when the request names no `from`: today and the 29 days before it.
pub const DEFAULT_RANGE_DAYS: u64 = 30;

/// The longest range one request may ask for, in days (`from` to `to`, both included): a
/// year, leap day included. Longer ranges are refused, so one request cannot scan a key's
/// whole history.
pub const MAX_RANGE_DAYS: u64 = 366;

/// The date format of `from` and `to` (ISO 8601 calendar date).
const DATE_FORMAT: &str = "%Y-%m-%d";

/// `[prices.PROVIDER]`: what one provider costs, to estimate the cost of usage. A provider
/// without a table costs nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderPrice {
    /// US dollars per minute of caller audio sent to the provider. Default 0; not negative.
    pub usd_per_minute_in: f64,
    /// US dollars per minute of the provider's audio sent back to the caller. Default 0; not
    /// negative.
    pub usd_per_minute_out: f64,
}

impl ProviderPrice {
    /// The estimated cost of this much audio, in US dollars (unrounded).
    pub fn cost_usd(&self, audio_in_ms: i64, audio_out_ms: i64) -> f64 {
        minutes(audio_in_ms) * self.usd_per_minute_in
            + minutes(audio_out_ms) * self.usd_per_minute_out
    }
}

/// Checks every price table: each value finite and not negative, each table naming a provider
/// that exists (`known` says which do), so that a typo cannot silently price a provider at 0.
///
/// # Errors
///
/// A message naming the key (`prices.NAME.usd_per_minute_in`) and what is wrong with it.
pub fn validate_prices(
    prices: &BTreeMap<String, ProviderPrice>,
    known: impl Fn(&str) -> bool,
) -> Result<(), String> {
    for (name, price) in prices {
        if !known(name) {
            return Err(format!(
                "prices.{name}: there is no provider {name:?} (add a [providers.{name}] table \
                 or price a built-in provider)"
            ));
        }
        for (key, value) in [
            ("usd_per_minute_in", price.usd_per_minute_in),
            ("usd_per_minute_out", price.usd_per_minute_out),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(format!(
                    "prices.{name}.{key} must be a number of US dollars, 0 or more (got {value})"
                ));
            }
        }
    }
    Ok(())
}

fn minutes(ms: i64) -> f64 {
    ms as f64 / 60_000.0
}

fn seconds(ms: i64) -> f64 {
    ms as f64 / 1_000.0
}

/// Rounded to a millionth of a dollar, so sums of floating-point costs read cleanly.
fn round_usd(usd: f64) -> f64 {
    (usd * 1e6).round() / 1e6
}

/// The query string of `GET /v1/usage`. `api_key` is the edge's (a key in the query).
#[derive(Debug, Default, Deserialize)]
struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    api_key: Option<String>,
}

/// Why a date range was refused; the message goes to the caller as the problem's detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeError {
    /// `from` or `to` is not a `YYYY-MM-DD` date.
    #[error("{name} must be a date as YYYY-MM-DD (UTC)")]
    BadDate {
        /// `from` or `to`.
        name: &'static str,
    },
    /// `from` is after `to`.
    #[error("from must not be after to")]
    Reversed,
    /// The range is longer than [`MAX_RANGE_DAYS`].
    #[error("the range may cover at most {MAX_RANGE_DAYS} days")]
    TooLong,
}

/// The days a request covers, `from` to `to`, both included (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    /// The first day.
    pub from: NaiveDate,
    /// The last day.
    pub to: NaiveDate,
}

impl DateRange {
    /// The range of `from` and `to` as given (`None`: not given) on day `today`: `to`
    /// defaults to today, `from` to [`DEFAULT_RANGE_DAYS`] days ending on `to`.
    ///
    /// # Errors
    ///
    /// [`RangeError`]: a value that is not a `YYYY-MM-DD` date, `from` after `to`, or more
    /// than [`MAX_RANGE_DAYS`] days.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        today: NaiveDate,
    ) -> Result<DateRange, RangeError> {
        let to = match to {
            Some(text) => parse_date(text, "to")?,
            None => today,
        };
        let from = match from {
            Some(text) => parse_date(text, "from")?,
            None => to
                .checked_sub_days(Days::new(DEFAULT_RANGE_DAYS - 1))
                .unwrap_or(NaiveDate::MIN),
        };
        if from > to {
            return Err(RangeError::Reversed);
        }
        let days = (to - from).num_days() + 1;
        if days > MAX_RANGE_DAYS as i64 {
            return Err(RangeError::TooLong);
        }
        Ok(DateRange { from, to })
    }

    /// The instants it covers: from the start of `from` up to (not including) the start of
    /// the day after `to`, in UTC.
    pub fn instants(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        let start = |day: NaiveDate| day.and_time(NaiveTime::MIN).and_utc();
        let after = self
            .to
            .checked_add_days(Days::new(1))
            .map_or(DateTime::<Utc>::MAX_UTC, start);
        (start(self.from), after)
    }
}

/// A strict `YYYY-MM-DD` (chrono alone would take `2026-1-5`).
fn parse_date(text: &str, name: &'static str) -> Result<NaiveDate, RangeError> {
    let well_formed = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !well_formed {
        return Err(RangeError::BadDate { name });
    }
    NaiveDate::parse_from_str(text, DATE_FORMAT).map_err(|_| RangeError::BadDate { name })
}

/// The body of `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageReport {
    /// The first day covered (UTC), `YYYY-MM-DD`.
    pub from: NaiveDate,
    /// The last day covered (UTC), included.
    pub to: NaiveDate,
    /// Per day and provider, by day then provider; days without usage are left out.
    pub days: Vec<UsageLine>,
    /// Per provider over the whole range, by provider.
    pub providers: Vec<UsageLine>,
    /// Over the whole range; `sessions` counts a session that used two providers once.
    pub totals: UsageTotals,
}

/// One line of a [`UsageReport`]: a provider's usage on a day (`date` set) or over the range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageLine {
    /// The UTC day; absent in the per-provider lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<NaiveDate>,
    /// The provider.
    pub provider: String,
    /// Sessions that used it.
    pub sessions: u64,
    /// Caller audio sent to it, in seconds.
    pub audio_in_seconds: f64,
    /// Its audio sent back to the callers, in seconds.
    pub audio_out_seconds: f64,
    /// What that audio costs by the price table, in US dollars.
    pub estimated_cost_usd: f64,
}

/// The totals of a [`UsageReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageTotals {
    /// Distinct sessions.
    pub sessions: u64,
    /// Caller audio, in seconds.
    pub audio_in_seconds: f64,
    /// Provider audio sent back, in seconds.
    pub audio_out_seconds: f64,
    /// Estimated cost, in US dollars.
    pub estimated_cost_usd: f64,
}

impl UsageReport {
    /// Prices `usage` (the store's sums over `range`) with `prices`.
    pub fn new(
        range: DateRange,
        usage: KeyUsage,
        prices: &BTreeMap<String, ProviderPrice>,
    ) -> UsageReport {
        let cost = |u: &DailyUsage| {
            prices
                .get(&u.provider)
                .map_or(0.0, |price| price.cost_usd(u.audio_in_ms, u.audio_out_ms))
        };
        let mut per_provider: BTreeMap<&str, (u64, i64, i64, f64)> = BTreeMap::new();
        let mut total = (0_i64, 0_i64, 0.0_f64);
        let mut days = Vec::with_capacity(usage.days.len());
        for u in &usage.days {
            let usd = cost(u);
            let p = per_provider.entry(u.provider.as_str()).or_default();
            p.0 += u.sessions;
            p.1 = p.1.saturating_add(u.audio_in_ms);
            p.2 = p.2.saturating_add(u.audio_out_ms);
            p.3 += usd;
            total.0 = total.0.saturating_add(u.audio_in_ms);
            total.1 = total.1.saturating_add(u.audio_out_ms);
            total.2 += usd;
            days.push(UsageLine {
                date: Some(u.day),
                provider: u.provider.clone(),
                sessions: u.sessions,
                audio_in_seconds: seconds(u.audio_in_ms),
                audio_out_seconds: seconds(u.audio_out_ms),
                estimated_cost_usd: round_usd(usd),
            });
        }
        let providers = per_provider
            .into_iter()
            .map(|(provider, (sessions, in_ms, out_ms, usd))| UsageLine {
                date: None,
                provider: provider.to_owned(),
                sessions,
                audio_in_seconds: seconds(in_ms),
                audio_out_seconds: seconds(out_ms),
                estimated_cost_usd: round_usd(usd),
            })
            .collect();
        UsageReport {
            from: range.from,
            to: range.to,
            days,
            providers,
            totals: UsageTotals {
                sessions: usage.sessions,
                audio_in_seconds: seconds(total.0),
                audio_out_seconds: seconds(total.1),
                estimated_cost_usd: round_usd(total.2),
            },
        }
    }
}

/// `GET /v1/usage`: the caller's own usage (see the [module documentation](self)). A key is
/// required (`--dev` does not open this endpoint to keyless callers: their sessions are
/// nobody's usage); a bad one gets 401, bad dates 400, a store that does not answer 503.
pub async fn get_usage(req: HttpRequest, state: web::Data<Arc<AppState>>) -> HttpResponse {
    // The key comes first: an unreadable query string is told apart only to a valid key.
    let query = web::Query::<UsageQuery>::from_query(req.query_string()).map(|q| q.into_inner());
    let query_key = query.as_ref().ok().and_then(|q| q.api_key.clone());
    let key = match caller_key(&req, query_key, &state.store).await {
        Ok(Some(key)) => key,
        Ok(None) => {
            return problem(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "present the API key as Authorization: Bearer or ?api_key=",
            );
        }
        Err(response) => return response,
    };
    let Ok(query) = query else {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "the query string cannot be read",
        );
    };
    let today = Utc::now().date_naive();
    let range = match DateRange::parse(query.from.as_deref(), query.to.as_deref(), today) {
        Ok(range) => range,
        Err(error) => return problem(StatusCode::BAD_REQUEST, "bad_range", &error.to_string()),
    };
    let (from, until) = range.instants();
    match state.store.key_usage(key.id, from, until).await {
        Ok(usage) => HttpResponse::Ok().json(UsageReport::new(range, usage, &state.prices)),
        Err(error) => {
            tracing::warn!(%error, "cannot read usage");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "cannot read usage now",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, DATE_FORMAT).unwrap()
    }

    #[test]
    fn range_defaults_to_the_last_30_days_including_today() {
        let today = day("2026-12-04");
        let range = DateRange::parse(None, None, today).unwrap();
        assert_eq!((range.from, range.to), (day("2026-11-05"), today));
        let (start, until) = range.instants();
        assert_eq!(start.to_rfc3339(), "2026-11-05T00:00:00+00:00");
        assert_eq!(until.to_rfc3339(), "2026-12-05T00:00:00+00:00");
        let range = DateRange::parse(None, Some("2026-01-31"), today).unwrap();
        assert_eq!(range.from, day("2026-01-02"));
        let range = DateRange::parse(Some("2026-12-04"), None, today).unwrap();
        assert_eq!((range.from, range.to), (today, today));
    }

    #[test]
    fn bad_ranges_are_refused_with_what_is_wrong() {
        let today = day("2026-12-04");
        for bad in [
            "2026-1-05",
            "yesterday",
            "2026-02-30",
            "2026-12-04T00:00",
            "",
            "+2026-1-01",
        ] {
            assert_eq!(
                DateRange::parse(Some(bad), None, today),
                Err(RangeError::BadDate { name: "from" }),
                "{bad:?}"
            );
        }
        assert_eq!(
            DateRange::parse(None, Some("12/04/2026"), today),
            Err(RangeError::BadDate { name: "to" })
        );
        assert_eq!(
            DateRange::parse(Some("2026-12-05"), Some("2026-12-04"), today),
            Err(RangeError::Reversed)
        );
        assert_eq!(
            DateRange::parse(Some("2024-12-31"), Some("2026-01-01"), today),
            Err(RangeError::TooLong)
        );
        assert!(DateRange::parse(Some("2025-01-01"), Some("2026-01-01"), today).is_ok());
        assert!(DateRange::parse(Some("2024-01-01"), Some("2024-12-31"), today).is_ok());
    }

    #[test]
    fn costs_are_price_times_minutes_and_totals_add_up() {
        let prices = BTreeMap::from([(
            "openai".to_owned(),
            ProviderPrice {
                usd_per_minute_in: 0.06,
                usd_per_minute_out: 0.24,
            },
        )]);
        let usage = KeyUsage {
            days: vec![
                DailyUsage {
                    day: day("2026-12-03"),
                    provider: "echo".into(),
                    sessions: 2,
                    audio_in_ms: 90_000,
                    audio_out_ms: 89_960,
                },
                DailyUsage {
                    day: day("2026-12-03"),
                    provider: "openai".into(),
                    sessions: 1,
                    audio_in_ms: 120_000,
                    audio_out_ms: 30_000,
                },
                DailyUsage {
                    day: day("2026-12-04"),
                    provider: "openai".into(),
                    sessions: 1,
                    audio_in_ms: 60_000,
                    audio_out_ms: 0,
                },
            ],
            sessions: 3,
        };
        let range = DateRange {
            from: day("2026-12-01"),
            to: day("2026-12-04"),
        };
        let report = UsageReport::new(range, usage, &prices);
        assert_eq!(report.days[0].estimated_cost_usd, 0.0, "echo has no price");
        assert_eq!(
            report.days[1].estimated_cost_usd, 0.24,
            "2 min in + 0.5 min out"
        );
        assert_eq!(report.days[2].estimated_cost_usd, 0.06);
        assert_eq!(report.providers.len(), 2);
        assert_eq!(report.providers[1].provider, "openai");
        assert_eq!(report.providers[1].sessions, 2);
        assert_eq!(report.providers[1].audio_in_seconds, 180.0);
        assert_eq!(report.providers[1].estimated_cost_usd, 0.3);
        assert_eq!(report.totals.sessions, 3);
        assert_eq!(report.totals.audio_in_seconds, 270.0);
        assert_eq!(report.totals.estimated_cost_usd, 0.3);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["from"], "2026-12-01");
        assert_eq!(json["days"][1]["date"], "2026-12-03");
        assert!(json["providers"][0].get("date").is_none());
    }

    #[test]
    fn prices_must_name_a_provider_and_not_be_negative() {
        let known = |name: &str| name == "openai";
        let price = |usd_per_minute_in, usd_per_minute_out| ProviderPrice {
            usd_per_minute_in,
            usd_per_minute_out,
        };
        let one = |name: &str, p| BTreeMap::from([(name.to_owned(), p)]);
        assert!(validate_prices(&one("openai", price(0.0, 0.5)), known).is_ok());
        let message = validate_prices(&one("openai", price(-0.1, 0.0)), known).unwrap_err();
        assert!(
            message.contains("prices.openai.usd_per_minute_in"),
            "{message}"
        );
        let message = validate_prices(&one("openai", price(0.0, f64::NAN)), known).unwrap_err();
        assert!(
            message.contains("prices.openai.usd_per_minute_out"),
            "{message}"
        );
        let message = validate_prices(&one("opneai", price(0.1, 0.1)), known).unwrap_err();
        assert!(message.contains("prices.opneai"), "{message}");
    }
}
