//! The contact-tracing API client and the classification of its answers.
//!
//! | answer | class |
//! | --- | --- |
//! | 200, 201 | applied |
//! | 409 | the API already holds this transition or a newer version of the record: done, never retried |
//! | 400, 404, 413, 422 | permanent: dead-letter now |
//! | 401, 403 | credentials/configuration: retry with backoff, alarm |
//! | 429 (+ Retry-After) | retry no sooner than asked |
//! | 5xx, timeout, connection error | transient: exponential backoff with jitter |
//!
//! A timeout or a connection that broke mid-call leaves the outcome unknown (the API may
//! still apply the request): the record's lease is kept until it expires. An API that could
//! not be reached at all (refused, DNS, TLS, connect timeout) never saw the request: the
//! lease is released at once, as after a 5xx.

use crate::ports::api::ApiAnswer;
use std::time::Duration;

/// Why a call is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransientKind {
    /// A 5xx answer.
    ServerError,
    /// 429: the API asks us to slow down (no sooner than its `Retry-After`).
    RateLimited,
    /// 401 or 403: the API refused our credentials.
    Auth,
    /// No answer within the request timeout.
    Timeout,
    /// No connection could be made: the request never left.
    Unreachable,
    /// The connection broke before an answer.
    Connection,
    /// Unexpected status (e.g. 3xx, other 4xx): retried, then dead-lettered by redrive.
    Unexpected,
}

impl TransientKind {
    /// Whether the call's outcome is unknown: the request may have reached the API, which
    /// may still be working on it (no answer in time, or the connection broke).
    pub fn outcome_unknown(self) -> bool {
        matches!(self, TransientKind::Timeout | TransientKind::Connection)
    }

    /// The kind as logs and `Fate::Retry` name it (`server_error`, `rate_limited`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            TransientKind::ServerError => "server_error",
            TransientKind::RateLimited => "rate_limited",
            TransientKind::Auth => "auth",
            TransientKind::Timeout => "timeout",
            TransientKind::Unreachable => "unreachable",
            TransientKind::Connection => "connection",
            TransientKind::Unexpected => "unexpected_status",
        }
    }

    /// Failures that mean "the API is down or refusing us": they trip the circuit breaker.
    pub fn trips_breaker(self) -> bool {
        !matches!(self, TransientKind::Unexpected)
    }
}

/// What one call's answer means for the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// 200 or 201: the API applied the record.
    Applied {
        /// The HTTP status.
        status: u16,
    },
    /// 409: the API already holds this transition (a call with this idempotency key was
    /// applied: duplicate) or a newer version of the record (this version is at or below
    /// its own: stale). Done, never retried; the version is acknowledged in the ledger.
    AlreadyApplied,
    /// The API refused the record for good (400, 404, 413, 422): dead-letter now.
    Permanent {
        /// The HTTP status.
        status: u16,
        /// The status as text (never the API's error body).
        reason: String,
    },
    /// Worth retrying after a backoff.
    Transient {
        /// Why.
        kind: TransientKind,
        /// The HTTP status; `None` for a timeout or a connection failure.
        status: Option<u16>,
        /// How long the API asked us to wait (`Retry-After`); `None` when it did not say.
        retry_after: Option<Duration>,
        /// What happened, without the API's error body.
        reason: String,
    },
}

/// `Retry-After`: delta-seconds or an HTTP-date.
pub fn parse_retry_after(v: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let d = at.with_timezone(&chrono::Utc) - now;
    Some(d.to_std().unwrap_or(Duration::ZERO))
}

fn status_text(code: u16) -> String {
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("HTTP {code} {reason}").trim().to_string()
}

/// Classify an answer exactly per the API contract. Reasons carry the status only: an
/// API's error body may echo row values, so it is never copied.
pub fn classify(answer: &ApiAnswer) -> Delivery {
    match answer {
        ApiAnswer::Status { code, retry_after } => match *code {
            200 | 201 => Delivery::Applied { status: *code },
            409 => Delivery::AlreadyApplied,
            400 | 404 | 413 | 422 => Delivery::Permanent {
                status: *code,
                reason: status_text(*code),
            },
            401 | 403 => Delivery::Transient {
                kind: TransientKind::Auth,
                status: Some(*code),
                retry_after: None,
                reason: format!("{}: check the API token secret", status_text(*code)),
            },
            429 => Delivery::Transient {
                kind: TransientKind::RateLimited,
                status: Some(429),
                retry_after: retry_after
                    .as_deref()
                    .and_then(|v| parse_retry_after(v, chrono::Utc::now())),
                reason: status_text(429),
            },
            500..=599 => Delivery::Transient {
                kind: TransientKind::ServerError,
                status: Some(*code),
                retry_after: None,
                reason: status_text(*code),
            },
            other => Delivery::Transient {
                kind: TransientKind::Unexpected,
                status: Some(other),
                retry_after: None,
                reason: status_text(other),
            },
        },
        ApiAnswer::Timeout => Delivery::Transient {
            kind: TransientKind::Timeout,
            status: None,
            retry_after: None,
            reason: "the API did not answer in time".into(),
        },
        ApiAnswer::Unreachable(e) => Delivery::Transient {
            kind: TransientKind::Unreachable,
            status: None,
            retry_after: None,
            reason: format!("the API could not be reached: {e}"),
        },
        ApiAnswer::Connection(e) => Delivery::Transient {
            kind: TransientKind::Connection,
            status: None,
            retry_after: None,
            reason: format!("connection failed: {e}"),
        },
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn st(code: u16) -> Delivery {
        classify(&ApiAnswer::Status {
            code,
            retry_after: None,
        })
    }

    #[test]
    fn classification_follows_the_contract() {
        assert_eq!(st(200), Delivery::Applied { status: 200 });
        assert_eq!(st(201), Delivery::Applied { status: 201 });
        assert_eq!(st(409), Delivery::AlreadyApplied);
        for c in [400, 404, 413, 422] {
            assert!(
                matches!(st(c), Delivery::Permanent { status, .. } if status == c),
                "{c}"
            );
        }
        for c in [401, 403] {
            assert!(matches!(
                st(c),
                Delivery::Transient {
                    kind: TransientKind::Auth,
                    ..
                }
            ));
        }
        for c in [500, 502, 503, 504] {
            assert!(matches!(
                st(c),
                Delivery::Transient {
                    kind: TransientKind::ServerError,
                    ..
                }
            ));
        }
        assert!(matches!(
            classify(&ApiAnswer::Timeout),
            Delivery::Transient {
                kind: TransientKind::Timeout,
                ..
            }
        ));
        assert!(matches!(
            classify(&ApiAnswer::Connection("reset".into())),
            Delivery::Transient {
                kind: TransientKind::Connection,
                ..
            }
        ));
        assert!(matches!(
            classify(&ApiAnswer::Unreachable("refused".into())),
            Delivery::Transient {
                kind: TransientKind::Unreachable,
                ..
            }
        ));
        // a call that may have reached the API leaves its outcome unknown; one that never
        // left does not
        assert!(TransientKind::Timeout.outcome_unknown());
        assert!(TransientKind::Connection.outcome_unknown());
        assert!(!TransientKind::Unreachable.outcome_unknown());
        assert!(TransientKind::Unreachable.trips_breaker());
        assert!(matches!(
            st(302),
            Delivery::Transient {
                kind: TransientKind::Unexpected,
                ..
            }
        ));
        let d = classify(&ApiAnswer::Status {
            code: 429,
            retry_after: Some("7".into()),
        });
        assert!(
            matches!(d, Delivery::Transient { kind: TransientKind::RateLimited, retry_after: Some(r), .. } if r == Duration::from_secs(7))
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
