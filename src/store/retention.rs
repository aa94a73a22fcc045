//! The retention policy: delete old session records, anonymise old client IPs.
//!
//! Both rules are idempotent, so running them hourly (`voxroute serve`), on demand
//! (`voxroute retention run`) or from several replicas at once is safe. Deletion runs first, so
//! a record past both windows is deleted rather than anonymised. A deleted record's usage
//! rows (`session_usage`) are deleted with it, in the same transaction.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, SubsecRound as _, TimeDelta, Utc};
use uuid::Uuid;

use super::{QueryError, Store};
use crate::config::RetentionConfig;

/// Rows anonymised per transaction: bounds memory and lock time on large tables.
const ANONYMISE_PAGE: usize = 500;

/// What one retention run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetentionReport {
    /// Session records deleted (their usage rows went with them, uncounted).
    pub deleted: u64,
    /// Client IPs rewritten to their anonymised form (already anonymised ones are not
    /// counted again).
    pub anonymised: u64,
}

/// The anonymised form of a client address: IPv4 keeps its /24 (last octet 0), IPv6 its /48
/// (the last 80 bits 0). An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is treated as the
/// IPv4 address it carries. Idempotent.
pub fn anonymise_ip(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

/// The stored value that replaces `stored`: its anonymised address, or `None` (NULL) for a
/// value that is not an address at all (it cannot be anonymised, so it is dropped).
fn anonymised_text(stored: &str) -> Option<String> {
    stored
        .parse::<IpAddr>()
        .ok()
        .map(|ip| anonymise_ip(ip).to_string())
}

/// `now - days`, or `None` if that is before the calendar's start (nothing is that old).
fn cutoff(now: DateTime<Utc>, days: u32) -> Option<DateTime<Utc>> {
    let window = TimeDelta::try_days(i64::from(days))?;
    Some(now.checked_sub_signed(window)?.trunc_subsecs(6))
}

impl Store {
    /// Applies `policy` as of `now`: deletes sessions that started before
    /// `now - delete_after_days`, then anonymises the client IP of sessions that started before
    /// `now - anonymise_ip_after_days`.
    ///
    /// # Errors
    ///
    /// The database's error. Work done before it (deletion, earlier pages of anonymisation)
    /// stays done; running again finishes the job.
    pub async fn run_retention(
        &self,
        now: DateTime<Utc>,
        policy: &RetentionConfig,
    ) -> Result<RetentionReport, QueryError> {
        let mut report = RetentionReport::default();

        if let Some(before) = cutoff(now, policy.delete_after_days) {
            report.deleted = with_pool!(self, |pool| {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "DELETE FROM session_usage WHERE session_id IN \
                     (SELECT id FROM sessions WHERE started_at < $1)",
                )
                .bind(before)
                .execute(&mut *tx)
                .await?;
                let deleted = sqlx::query("DELETE FROM sessions WHERE started_at < $1")
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok::<_, QueryError>(deleted)
            })?;
        }

        if let Some(before) = cutoff(now, policy.anonymise_ip_after_days) {
            report.anonymised = self.anonymise_ips_before(before).await?;
        }
        Ok(report)
    }

    /// Anonymises the IPs of sessions started before `before`, a page at a time in id order.
    ///
    /// IPv4 values ending in `.0` are already anonymised and skipped by the query; IPv6 ones
    /// cannot be recognised in portable SQL, so they are read and skipped here when unchanged.
    async fn anonymise_ips_before(&self, before: DateTime<Utc>) -> Result<u64, QueryError> {
        const SELECT: &str = "SELECT id, client_ip FROM sessions \
             WHERE started_at < $1 AND client_ip IS NOT NULL AND client_ip NOT LIKE '%.0' \
             AND id > $2 ORDER BY id LIMIT $3";
        // Only rewrite the value that was read, so that a concurrent run (another replica)
        // is not counted twice.
        const UPDATE: &str = "UPDATE sessions SET client_ip = $2 WHERE id = $1 AND client_ip = $3";

        let mut anonymised = 0;
        let mut after = Uuid::nil();
        loop {
            let page: Vec<(Uuid, String)> = with_pool!(self, |pool| sqlx::query_as(SELECT)
                .bind(before)
                .bind(after)
                .bind(ANONYMISE_PAGE as i64)
                .fetch_all(pool)
                .await)?;
            let Some(&(last, _)) = page.last() else {
                break;
            };
            after = last;

            let changes: Vec<(Uuid, Option<String>, &str)> = page
                .iter()
                .filter_map(|(id, stored)| {
                    let new = anonymised_text(stored);
                    (new.as_deref() != Some(stored.as_str())).then_some((*id, new, stored.as_str()))
                })
                .collect();
            if !changes.is_empty() {
                anonymised += with_pool!(self, |pool| {
                    let mut tx = pool.begin().await?;
                    let mut changed = 0;
                    for (id, new, old) in &changes {
                        changed += sqlx::query(UPDATE)
                            .bind(id)
                            .bind(new)
                            .bind(old)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                    }
                    tx.commit().await?;
                    changed
                });
            }
            if page.len() < ANONYMISE_PAGE {
                break;
            }
        }
        Ok(anonymised)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(s: &str) -> String {
        anonymise_ip(s.parse().unwrap()).to_string()
    }

    #[test]
    fn ipv4_keeps_its_24() {
        assert_eq!(anon("203.0.113.77"), "203.0.113.0");
        assert_eq!(anon("203.0.113.0"), "203.0.113.0");
        assert_eq!(anon("::ffff:198.51.100.9"), "198.51.100.0");
    }

    #[test]
    fn ipv6_keeps_its_48() {
        assert_eq!(anon("2001:db8:abcd:1234:5678::1"), "2001:db8:abcd::");
        assert_eq!(anon("2001:db8:abcd::"), "2001:db8:abcd::");
        assert_eq!(anon("::1"), "::");
        // Ends in "::" yet is not anonymised: why IPv6 is not filtered in SQL by its text.
        assert_eq!(anon("2001:db8:1:2:3::"), "2001:db8:1::");
    }

    #[test]
    fn anonymising_is_idempotent_and_garbage_is_dropped() {
        for s in ["10.1.2.3", "2001:db8:1:2:3:4:5:6", "::ffff:1.2.3.4"] {
            let once = anon(s);
            assert_eq!(anon(&once), once);
        }
        assert_eq!(anonymised_text("not an ip"), None);
        assert_eq!(anonymised_text("10.1.2.3").as_deref(), Some("10.1.2.0"));
    }

    #[test]
    fn cutoff_is_days_before_now_and_never_overflows() {
        let now = Utc::now();
        assert_eq!(
            cutoff(now, 30),
            Some((now - TimeDelta::days(30)).trunc_subsecs(6))
        );
        assert_eq!(cutoff(now, u32::MAX), None);
    }
}
