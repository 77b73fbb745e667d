//! The one judgement of an attempt: what the chain does with it, what the
//! route's health learns from it, and whether the rest of the request moves.
//!
//! The policy decides the action; everything else follows from the action
//! and the attempt's record here, once. Health, the context-window jump, the
//! content-policy switch, metrics and the report all read the same verdict,
//! so a policy that stops on a `429` does not cool the route down, and a
//! status a policy falls back on counts as the route's failure.

use super::flights::{Flight, Landing, Looked};
use crate::inspect::BodyFacts;
use crate::native;
use crate::policy::{is_content_block, Action, Observed, Policy, ResponseInfo};
use crate::report::{AttemptRecord, Outcome, UpstreamError};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// What one attempt means for the request and for its route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Serve this answer, stop with it, or fall back.
    pub(crate) action: Action,
    /// What the route's health learns.
    pub(crate) health: Learned,
    /// Whether the rest of the request goes elsewhere.
    pub(crate) reroute: Reroute,
}

/// What a route's health learns from one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Learned {
    /// The route answered well.
    Success,
    /// The route failed; `retry_after` cools it for that long.
    Failure { retry_after: Option<Duration> },
    /// Nothing about the route: the request's own fault (a stop, a prompt
    /// too long, a moderation block), or the chain's deadline.
    Nothing,
}

/// Where the rest of the request goes after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reroute {
    /// On down the chain.
    Stay,
    /// The prompt did not fit: only routes with a larger window.
    LargerWindow,
    /// A moderation block: to the content-policy chain, if there is one.
    ContentPolicy,
}

/// Statuses whose `Retry-After` is how long the route cools down.
const RETRY_AFTER_STATUSES: [u16; 2] = [429, 503];

impl Verdict {
    /// The verdict on the attempt `record` describes, given the policy's
    /// `action` and whether the attempt got an answer to hand on.
    pub(crate) fn new(action: Action, answered: bool, record: &AttemptRecord) -> Self {
        let action = match action {
            // The deadline ends the chain whatever the policy thinks of it.
            _ if record.outcome == Outcome::DeadlineExceeded => Action::Stop,
            // Accepting a timeout or a transport error makes no sense.
            Action::Accept if !answered => Action::Fallback,
            action => action,
        };
        let (health, reroute) = match action {
            Action::Accept => (Learned::Success, Reroute::Stay),
            Action::Stop => (Learned::Nothing, Reroute::Stay),
            Action::Fallback => {
                let error = record.error.as_ref();
                let status = record.status.unwrap_or_default();
                if error.is_some_and(UpstreamError::is_context_length) {
                    (Learned::Nothing, Reroute::LargerWindow)
                } else if is_content_block(status, error) {
                    (Learned::Nothing, Reroute::ContentPolicy)
                } else {
                    let retry_after = record
                        .retry_after
                        .filter(|_| RETRY_AFTER_STATUSES.contains(&status.as_u16()));
                    (Learned::Failure { retry_after }, Reroute::Stay)
                }
            }
        };
        Verdict {
            action,
            health,
            reroute,
        }
    }
}

/// What a finished attempt means (the policy's action and all that follows
/// from it), and its record; it landed at `now`.
pub(super) fn judge<P: Policy, F, S, RB>(policy: &P, flight: &Flight<'_, F>, now: Instant) -> (Verdict, AttemptRecord)
where
    F: Future<Output = Landing<S, RB>>,
{
    let result = flight.landed.as_ref().and_then(|l| l.result.as_ref());
    let hop = flight.hop;
    let attempt = &flight.attempt;
    let mut record = AttemptRecord::new(flight.chain, flight.i, hop, Outcome::Timeout);
    record.hedged = flight.hedge;
    record.elapsed = now.saturating_duration_since(flight.started);
    let (action, answered) = match result {
        None => {
            record.outcome = if flight.by_deadline {
                Outcome::DeadlineExceeded
            } else {
                Outcome::Timeout
            };
            (policy.classify(attempt, &Observed::Timeout), false)
        }
        Some(Err(e)) => {
            record.outcome = Outcome::Transport;
            record.transport = Some(crate::redact::error_chain(&**e));
            (policy.classify(attempt, &Observed::Error(&**e)), false)
        }
        Some(Ok(answer)) => {
            let body = match &answer.body {
                Looked::Full(b) => Some(&b[..]),
                _ => None,
            };
            let info = ResponseInfo {
                status: answer.parts.status,
                headers: &answer.parts.headers,
                body,
                facts: &answer.facts,
            };
            let action = policy.classify(attempt, &Observed::Response(&info));
            record.status = Some(answer.parts.status);
            record.served_model = answer.facts.model.clone();
            record.upstream_fell_back =
                answer.parts.status.is_success()
                    && answer.facts.model.as_deref().is_some_and(|served| {
                        native::upstream_fell_back(&hop.model, &hop.route.native_fallbacks, served)
                    });
            record.upstream_attempts = answer.facts.upstream_attempts.clone();
            record.retry_after = info.retry_after();
            record.error = answer.facts.error.clone().or_else(|| {
                // A non-JSON error page still says something.
                (!answer.facts.json && !answer.parts.status.is_success())
                    .then(|| body.and_then(BodyFacts::text_excerpt))
                    .flatten()
                    .map(|m| UpstreamError {
                        message: Some(m),
                        ..Default::default()
                    })
            });
            record.outcome = match action {
                Action::Accept => Outcome::Served,
                Action::Stop => Outcome::Stopped,
                Action::Fallback if answer.parts.status.is_success() => Outcome::ErrorInBody,
                Action::Fallback => Outcome::HttpError,
            };
            (action, true)
        }
    };
    (Verdict::new(action, answered, &record), record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hop::Hop;
    use crate::Route;
    use http::StatusCode;
    use std::sync::Arc;

    fn record(outcome: Outcome, status: Option<u16>, error: Option<UpstreamError>) -> AttemptRecord {
        let chain: Arc<str> = Arc::from("default");
        let mut r = AttemptRecord::new(&chain, 0, &Hop::new(Route::new("m")), outcome);
        r.status = status.map(|s| StatusCode::from_u16(s).unwrap());
        r.error = error;
        r.retry_after = Some(Duration::from_secs(7));
        r
    }

    fn error(error_type: &str, message: &str) -> Option<UpstreamError> {
        Some(UpstreamError {
            error_type: Some(error_type.into()),
            message: Some(message.into()),
            ..UpstreamError::default()
        })
    }

    const SEVEN: Option<Duration> = Some(Duration::from_secs(7));

    #[test]
    fn what_health_learns_follows_the_action() {
        use Action::*;
        use Learned::*;
        let cases = [
            // (policy's action, outcome, status, answered) → health
            (Accept, Outcome::Served, Some(200), true, Success),
            (
                Fallback,
                Outcome::HttpError,
                Some(429),
                true,
                Failure { retry_after: SEVEN },
            ),
            (
                Fallback,
                Outcome::HttpError,
                Some(503),
                true,
                Failure { retry_after: SEVEN },
            ),
            // Retry-After counts only where it means "come back later".
            (
                Fallback,
                Outcome::HttpError,
                Some(500),
                true,
                Failure { retry_after: None },
            ),
            // A policy's own fallback status is the route's failure.
            (
                Fallback,
                Outcome::HttpError,
                Some(409),
                true,
                Failure { retry_after: None },
            ),
            (
                Fallback,
                Outcome::ErrorInBody,
                Some(200),
                true,
                Failure { retry_after: None },
            ),
            (Fallback, Outcome::Transport, None, false, Failure { retry_after: None }),
            (Fallback, Outcome::Timeout, None, false, Failure { retry_after: None }),
            // A policy that stops on 429 does not cool the route down.
            (Stop, Outcome::Stopped, Some(429), true, Nothing),
            (Stop, Outcome::Stopped, Some(401), true, Nothing),
            // The chain's deadline is not the route's fault.
            (Fallback, Outcome::DeadlineExceeded, None, false, Nothing),
        ];
        for (action, outcome, status, answered, health) in cases {
            let v = Verdict::new(action, answered, &record(outcome, status, None));
            assert_eq!(v.health, health, "{action:?} {outcome:?} {status:?}");
            assert_eq!(v.reroute, Reroute::Stay);
        }
    }

    #[test]
    fn the_action_is_normalized() {
        let timeout = record(Outcome::Timeout, None, None);
        assert_eq!(Verdict::new(Action::Accept, false, &timeout).action, Action::Fallback);
        let cut = record(Outcome::DeadlineExceeded, None, None);
        assert_eq!(Verdict::new(Action::Fallback, false, &cut).action, Action::Stop);
        let served = record(Outcome::Served, Some(200), None);
        assert_eq!(Verdict::new(Action::Accept, true, &served).action, Action::Accept);
    }

    #[test]
    fn context_length_and_moderation_move_the_request_and_spare_the_route() {
        let long = record(
            Outcome::HttpError,
            Some(400),
            error("context_length_exceeded", "too long"),
        );
        let v = Verdict::new(Action::Fallback, true, &long);
        assert_eq!((v.health, v.reroute), (Learned::Nothing, Reroute::LargerWindow));
        let by_text = record(
            Outcome::HttpError,
            Some(400),
            error(
                "invalid_request_error",
                "This model's maximum context length is 8192 tokens",
            ),
        );
        assert_eq!(
            Verdict::new(Action::Fallback, true, &by_text).reroute,
            Reroute::LargerWindow
        );

        let blocked = record(Outcome::HttpError, Some(403), error("content_policy_violation", "no"));
        let v = Verdict::new(Action::Fallback, true, &blocked);
        assert_eq!((v.health, v.reroute), (Learned::Nothing, Reroute::ContentPolicy));
        // A 403 saying it was flagged is the same block the policy falls back on.
        let flagged = record(Outcome::HttpError, Some(403), error("forbidden", "Input was flagged"));
        assert_eq!(
            Verdict::new(Action::Fallback, true, &flagged).reroute,
            Reroute::ContentPolicy
        );
        // "moderation" in a 500 is an outage, not a block.
        let outage = record(
            Outcome::HttpError,
            Some(500),
            error("server_error", "moderation service down"),
        );
        let v = Verdict::new(Action::Fallback, true, &outage);
        assert_eq!(v.reroute, Reroute::Stay);
        assert_eq!(v.health, Learned::Failure { retry_after: None });
        // A stop never moves the request.
        assert_eq!(Verdict::new(Action::Stop, true, &blocked).reroute, Reroute::Stay);
    }
}
