//! What an attempt's result means, and when to try again. Pure.
//!
//! Owns: the classification of one delivery attempt into an [`Outcome`],
//! the retry schedule with jitter and maximum age, `Retry-After` parsing,
//! and the offline probe backoff.
//!
//! | attempt result | outcome |
//! |---|---|
//! | 2xx | `Delivered` |
//! | 408, 425, 429, 5xx except 501, timeout, TLS or protocol error | `Retry` (honouring `Retry-After`, clamped) |
//! | 410 Gone | `DeadLetter` at once |
//! | other 3xx/4xx, 501 | `DeadLetter` (or `Retry` with `retry_client_errors`) |
//! | DNS failure, connection refused, no route | `Offline`: no attempt is spent; the lane pauses and probes |
//!
//! "Offline is not failure": a clinic offline for a week must end in
//! delivery, not in the dead-letter store, so unreachable destinations never
//! consume the retry budget.

use std::time::Duration;

/// The raw result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver answered with `status` (and maybe a `Retry-After` value).
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    /// No answer within the attempt timeout.
    Timeout,
    /// The destination could not be reached at all (DNS, refused, no route).
    Unreachable(String),
    /// Reached, but the exchange failed (TLS, reset, malformed response).
    Failed(String),
    /// The event cannot be turned into this destination's body (e.g. not
    /// FHIR-mappable): no attempt could ever succeed.
    Unsendable(String),
}

/// What to do next with an event on one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again; `after` overrides the schedule (from `Retry-After`).
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    DeadLetter {
        reason: String,
    },
    /// Pause the lane and probe; the attempt does not count.
    Offline {
        reason: String,
    },
}

/// Retry settings of a destination.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Wait before attempt `i + 1` (the first is normally zero); after the
    /// last attempt fails the event is dead-lettered.
    pub schedule: Vec<Duration>,
    /// Relative jitter, e.g. 0.2 for ±20 %.
    pub jitter: f64,
    /// Events older than this are dead-lettered instead of retried.
    pub max_age: Option<Duration>,
    /// Treat other 4xx (not 410) as retryable instead of dead-lettering.
    pub retry_client_errors: bool,
    /// Upper bound for a receiver's `Retry-After`.
    pub max_retry_after: Duration,
    /// Offline probe backoff: first wait and cap.
    pub probe_initial: Duration,
    pub probe_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        let s = Duration::from_secs;
        RetryPolicy {
            schedule: vec![s(0), s(5), s(30), s(300), s(1800), s(7200)],
            jitter: 0.2,
            max_age: None,
            retry_client_errors: false,
            max_retry_after: s(3600),
            probe_initial: s(1),
            probe_max: s(300),
        }
    }
}

impl RetryPolicy {
    /// The longest wait this policy can schedule between two attempts: the
    /// longest step with full jitter, or a receiver's capped `Retry-After`.
    pub fn longest_wait(&self) -> Duration {
        let step = self.schedule.iter().max().copied().unwrap_or_default();
        step.mul_f64(1.0 + self.jitter.max(0.0))
            .max(self.max_retry_after)
    }
}

/// Classifies one attempt's result. `now_unix_s` is needed for an HTTP-date `Retry-After`.
pub fn classify(result: &AttemptResult, policy: &RetryPolicy, now_unix_s: u64) -> Outcome {
    match result {
        AttemptResult::Status {
            status,
            retry_after,
        } => {
            let after = retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, now_unix_s))
                .map(|d| d.clamp(Duration::from_secs(1), policy.max_retry_after));
            match *status {
                200..=299 => Outcome::Delivered,
                408 | 425 | 429 => Outcome::Retry {
                    after,
                    reason: format!("HTTP {status}"),
                },
                410 => Outcome::DeadLetter {
                    reason: "HTTP 410 Gone: the receiver no longer accepts events".into(),
                },
                501 => Outcome::DeadLetter {
                    reason: "HTTP 501 Not Implemented".into(),
                },
                500..=599 => Outcome::Retry {
                    after,
                    reason: format!("HTTP {status}"),
                },
                _ if policy.retry_client_errors => Outcome::Retry {
                    after,
                    reason: format!("HTTP {status}"),
                },
                _ => Outcome::DeadLetter {
                    reason: format!("HTTP {status}: rejected by the receiver"),
                },
            }
        }
        AttemptResult::Timeout => Outcome::Retry {
            after: None,
            reason: "timed out".into(),
        },
        AttemptResult::Unsendable(why) => Outcome::DeadLetter {
            reason: format!("cannot be sent to this destination: {why}"),
        },
        AttemptResult::Unreachable(why) => Outcome::Offline {
            reason: why.clone(),
        },
        AttemptResult::Failed(why) => Outcome::Retry {
            after: None,
            reason: why.clone(),
        },
    }
}

/// The wait before the next attempt after `attempts` attempts have failed,
/// or `None` when the budget (count or `max_age`) is spent and the event
/// must be dead-lettered. `unit_random` in `0..1` drives the jitter.
pub fn next_delay(
    policy: &RetryPolicy,
    attempts: u32,
    age: Duration,
    override_after: Option<Duration>,
    unit_random: f64,
) -> Option<Duration> {
    let base = *policy.schedule.get(attempts as usize)?;
    let wait = match override_after {
        Some(a) => a,
        None => {
            let factor = 1.0 + policy.jitter * (2.0 * unit_random.clamp(0.0, 1.0) - 1.0);
            base.mul_f64(factor.max(0.0))
        }
    };
    match policy.max_age {
        Some(max) if age + wait > max => None,
        _ => Some(wait),
    }
}

/// The wait before the `n`-th probe of an offline destination (0-based):
/// doubling from `probe_initial`, capped at `probe_max`, ±`jitter`.
pub fn probe_delay(policy: &RetryPolicy, n: u32, unit_random: f64) -> Duration {
    let base = policy
        .probe_initial
        .saturating_mul(1u32 << n.min(20))
        .min(policy.probe_max);
    let factor = 1.0 + policy.jitter * (2.0 * unit_random.clamp(0.0, 1.0) - 1.0);
    base.mul_f64(factor.max(0.0))
}

/// Parses `Retry-After`: delta-seconds or an IMF-fixdate
/// (`Wed, 21 Oct 2015 07:28:00 GMT`). Dates in the past mean "now".
pub fn parse_retry_after(value: &str, now_unix_s: u64) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == parts[2])? as i64 + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (H. Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let at = days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    Some(Duration::from_secs((at - now_unix_s as i64).max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> AttemptResult {
        AttemptResult::Status {
            status: s,
            retry_after: None,
        }
    }

    #[test]
    fn every_status_class_maps_to_the_documented_outcome() {
        let p = RetryPolicy::default();
        let kind = |r: &AttemptResult| match classify(r, &p, 0) {
            Outcome::Delivered => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::DeadLetter { .. } => "dead",
            Outcome::Offline { .. } => "offline",
        };
        for (s, want) in [
            (200, "delivered"),
            (204, "delivered"),
            (301, "dead"),
            (400, "dead"),
            (401, "dead"),
            (404, "dead"),
            (408, "retry"),
            (410, "dead"),
            (425, "retry"),
            (429, "retry"),
            (500, "retry"),
            (501, "dead"),
            (502, "retry"),
            (503, "retry"),
            (599, "retry"),
        ] {
            assert_eq!(kind(&status(s)), want, "HTTP {s}");
        }
        assert_eq!(kind(&AttemptResult::Timeout), "retry");
        assert_eq!(
            kind(&AttemptResult::Failed("connection reset".into())),
            "retry"
        );
        assert_eq!(
            kind(&AttemptResult::Unreachable("connection refused".into())),
            "offline"
        );
        let lenient = RetryPolicy {
            retry_client_errors: true,
            ..p.clone()
        };
        assert!(matches!(
            classify(&status(404), &lenient, 0),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(&status(410), &lenient, 0),
            Outcome::DeadLetter { .. }
        ));
    }

    #[test]
    fn retry_after_is_honoured_and_clamped() {
        let p = RetryPolicy::default();
        let r = |v: &str| AttemptResult::Status {
            status: 429,
            retry_after: Some(v.into()),
        };
        let after = |v| match classify(&r(v), &p, 1_445_412_400) {
            Outcome::Retry { after, .. } => after,
            other => panic!("{other:?}"),
        };
        assert_eq!(after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            after("0"),
            Some(Duration::from_secs(1)),
            "at least a second"
        );
        assert_eq!(
            after("999999"),
            Some(Duration::from_secs(3600)),
            "at most max_retry_after"
        );
        // 2015-10-21 07:28:00 GMT is 1445412480: 80 s after "now".
        assert_eq!(
            after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::from_secs(80))
        );
        assert_eq!(after("soon"), None);
    }

    #[test]
    fn the_default_schedule_is_immediately_5s_30s_5min_30min_2h_then_dead_letter() {
        let p = RetryPolicy::default();
        let waits: Vec<Option<u64>> = (0..7)
            .map(|n| next_delay(&p, n, Duration::ZERO, None, 0.5).map(|d| d.as_secs()))
            .collect();
        assert_eq!(
            waits,
            [
                Some(0),
                Some(5),
                Some(30),
                Some(300),
                Some(1800),
                Some(7200),
                None
            ]
        );
    }

    #[test]
    fn the_longest_wait_covers_every_jittered_step_and_a_capped_retry_after() {
        let p = RetryPolicy::default();
        let longest = p.longest_wait();
        for attempts in 0..p.schedule.len() as u32 {
            for r in [0.0, 0.5, 1.0] {
                let wait = next_delay(&p, attempts, Duration::ZERO, None, r).unwrap();
                assert!(wait <= longest, "{wait:?} > {longest:?}");
            }
        }
        let after = Some(p.max_retry_after);
        assert!(next_delay(&p, 1, Duration::ZERO, after, 0.5).unwrap() <= longest);
        assert_eq!(longest, Duration::from_secs(7200).mul_f64(1.2));
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_max_age_ends_retries() {
        let p = RetryPolicy::default();
        let lo = next_delay(&p, 2, Duration::ZERO, None, 0.0).unwrap();
        let hi = next_delay(&p, 2, Duration::ZERO, None, 1.0).unwrap();
        assert_eq!((lo.as_secs(), hi.as_secs()), (24, 36));
        let aged = RetryPolicy {
            max_age: Some(Duration::from_secs(60)),
            ..p
        };
        assert!(next_delay(&aged, 2, Duration::from_secs(20), None, 0.5).is_some());
        assert!(next_delay(&aged, 2, Duration::from_secs(40), None, 0.5).is_none());
    }

    #[test]
    fn offline_probes_back_off_to_a_cap() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let d: Vec<u64> = (0..12).map(|n| probe_delay(&p, n, 0.5).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(probe_delay(&p, 1000, 0.5).as_secs(), 300, "no overflow");
    }
}
