//! One request's trip down its chains: the state `run`'s loop carries
//! between its two steps, *board* (choose and build the next attempt) and
//! *settle* (act on the verdict of one that landed).
//!
//! The trip owns no future: `run` puts what [`Trip::board`] returns into
//! its [`Flights`] and waits on them, so every `Pending` of the request is
//! one of theirs (see the waker note in [`flights`](super::flights)).

use super::answer::{exhausted, served};
use super::attempt::{attempt_body, attempt_request};
use super::flights::{fly, Flight, Flights, Flying, Landing, ProbeGuard};
use super::plan::{Plan, Step};
use super::prepare::Prepared;
use super::verdict::{judge, Learned};
use super::Shared;
use crate::body::ResponseBody;
use crate::capability::SkipReason;
use crate::dialect::Dialect;
use crate::health::Admission;
use crate::hop::Hop;
use crate::json::{BadEdits, ReplayBody};
use crate::policy::{Action, Policy};
use crate::report::{AttemptRecord, FallbackReport, Outcome, Resolution};
use crate::request::RequestIndex;
use crate::{Attempt, BoxError};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::Service;
use tracing::field::Empty;

/// The request's state between attempts.
pub(super) struct Trip<'s, S, P> {
    shared: &'s Shared<P>,
    plan: Plan<'s>,
    report: FallbackReport,
    body: Bytes,
    index: &'s RequestIndex,
    deadline: Option<Instant>,
    drill: bool,
    dialect: Dialect,
    started: Instant,
    /// The caller's head; the last attempt takes it, earlier ones a copy.
    caller_parts: Option<http::request::Parts>,
    /// The service for the next attempt, and whether it must be polled
    /// ready first (the caller's was, by `poll_ready`; one back from an
    /// attempt was not).
    spare: Option<(S, bool)>,
    /// A clone of the caller's service to make hedges from; only with hedging.
    template: Option<S>,
}

/// What [`Trip::board`] found to do.
pub(super) enum Board<'s, F: Future> {
    /// An attempt sent, and when the next route starts beside it if it has
    /// no answer by then.
    Flying(Flying<'s, F>, Option<Instant>),
    /// Nothing to launch now (every route left was passed by, or the
    /// deadline leaves no time while an attempt is still in flight).
    Nothing,
    /// The deadline passed with nothing in flight.
    DeadlinePassed,
    /// Building the attempt's body failed: a bug of the crate, answered
    /// without sending anything.
    Broken(BadEdits),
}

/// What [`Trip::settle`] decided.
pub(super) enum Settled<'s, F: Future> {
    /// This attempt's answer is the caller's ([`Trip::serve`]).
    Won(Winner<'s, F>),
    /// The chain ends here (a stop without an answer).
    Ended,
    /// On to the next attempt (or the one still in flight).
    Onward,
}

/// The attempt whose answer the caller gets: its flight, the answer still
/// in it (so it is not moved on its way to the caller).
pub(super) struct Winner<'s, F: Future> {
    flight: Flying<'s, F>,
}

impl<'s, S: Clone, P: Policy> Trip<'s, S, P> {
    /// The trip of a prepared request, with the caller's (ready) service.
    // Inlined into `prepare`, which puts the trip (~1 KB) where `run` keeps
    // it, so it is built there rather than here and then moved.
    #[inline(always)]
    pub(super) fn new(shared: &'s Shared<P>, prepared: Prepared<'s>, svc: S, started: Instant) -> Self {
        // Its fields are moved out one by one: binding the whole to another
        // name first (`let p = prepared`) was a copy of it.
        let p = &prepared;
        let plan = Plan::new(&shared.chains, p.chain_name, p.chain, p.drill, p.needs, p.guard)
            .max_open_share(shared.health.as_ref().map_or(1.0, |h| h.max_open_share()))
            .sticky(shared.affinity.as_ref(), p.session);
        if plan.guard_inactive() {
            tracing::warn!("llm fallback price guard inactive: the primary's price is unknown");
        }
        // Hedges need a second service; clone one only when hedging is on.
        let template = shared.hedge_budget.as_ref().map(|b| {
            b.request();
            svc.clone()
        });
        Trip {
            shared,
            plan,
            report: prepared.report,
            body: prepared.body,
            index: prepared.index,
            deadline: prepared.deadline,
            drill: prepared.drill,
            dialect: prepared.dialect,
            started,
            caller_parts: Some(prepared.parts),
            spare: Some((svc, false)),
            template,
        }
    }

    /// Chooses the next route (recording every route passed by) and builds
    /// its attempt. `in_air` counts the attempts in flight: with one, the
    /// new attempt is a hedge.
    pub(super) fn board<RB>(&mut self, in_air: usize) -> Board<'s, impl Future<Output = Landing<S, RB>>>
    where
        S: Service<Request<ReplayBody>, Response = Response<RB>>,
        S::Error: Into<BoxError>,
        RB: Body<Data = Bytes> + Unpin,
        RB::Error: Into<BoxError>,
    {
        let shared = self.shared;
        loop {
            let mut admit = |hop: &Hop| {
                let health = shared.health.as_ref();
                health.map_or(Admission::Open, |h| h.admit(&hop.health_key, Instant::now()))
            };
            let admit: Option<&mut dyn FnMut(&Hop) -> Admission> = match shared.health {
                Some(_) => Some(&mut admit),
                None => None,
            };
            // One reading of the clock per route considered (it is a call
            // into the runtime's clock each time).
            let now = Instant::now();
            let launch = match self.plan.next(now, in_air > 0, admit) {
                Step::Launch(launch) => launch,
                Step::Skip { index, hop, reason } => {
                    skip(&mut self.report, self.plan.chain_name(), index, hop, reason);
                    continue;
                }
                Step::Done => return Board::Nothing,
            };
            let (i, hop, chain) = (launch.index, launch.hop, launch.chain);
            if launch.forced {
                // This attempt's record replaces the route's skip.
                self.report
                    .attempts
                    .retain(|a| !(a.index == i && a.outcome == Outcome::Skipped && a.chain == *chain));
            }
            let probe = match (&shared.health, launch.probe) {
                (Some(health), true) => Some(ProbeGuard::new(health.clone(), hop)),
                _ => None,
            };
            let remaining = self.deadline.map(|d| d.saturating_duration_since(now));
            if remaining == Some(Duration::ZERO) {
                if in_air > 0 {
                    return Board::Nothing; // no new attempt; the one in flight may still answer
                }
                self.report.resolution = Resolution::DeadlineExceeded;
                return Board::DeadlinePassed;
            }
            let (limit, by_deadline) = attempt_limit(hop, self.index.stream, remaining);
            let attempt = Attempt {
                chain: chain.clone(),
                index: i,
                model: hop.model.clone(),
                label: hop.label.clone(),
                timeout: limit,
                deployment: hop.deployment.clone(),
                key: hop.key.clone(),
            };
            let replay = match attempt_body(&self.body, self.index, hop) {
                Ok(replay) => replay,
                Err(bad) => return Board::Broken(bad),
            };
            // The last attempt this request can make (no route after it, no
            // switch to a content-policy chain) takes the caller's parts.
            let parts = if !self.plan.has_more() && !self.plan.may_switch() {
                self.caller_parts.take()
            } else {
                self.caller_parts.clone()
            };
            let Some(parts) = parts else {
                return Board::Nothing; // cannot happen: nothing launches after the last attempt
            };
            let request = attempt_request(
                parts,
                replay,
                attempt.clone(),
                hop,
                &shared.credential_headers,
                self.dialect,
                shared.attempt_extension,
            );
            let hedge = in_air > 0;
            let span = tracing::info_span!(
                "llm_fallback.attempt",
                fallback.attempt = i,
                fallback.label = attempt.label().unwrap_or(""),
                fallback.hedge = hedge,
                gen_ai.request.model = attempt.model(),
                gen_ai.response.model = Empty,
                http.response.status_code = Empty,
                fallback.outcome = Empty,
                fallback.latency_ms = Empty,
                error.type = Empty,
                fallback.deployment = Empty,
                fallback.key = Empty,
            );
            if !span.is_disabled() {
                // Recorded only when the route has deployments or several
                // keys; a key by its variable's name, never its value.
                if let Some(d) = &hop.deployment {
                    span.record("fallback.deployment", &**d);
                }
                if let Some(k) = &hop.key {
                    span.record("fallback.key", &**k);
                }
            }
            let (svc, must_poll) = match (self.spare.take(), &self.template) {
                (Some(pair), _) => pair,
                // A hedge: a clone of the caller's service, polled ready first.
                (None, Some(template)) => (template.clone(), true),
                // Cannot happen: only hedging launches beside an attempt,
                // and hedging keeps a template.
                (None, None) => return Board::Nothing,
            };
            if hedge {
                crate::metrics::hedge_started(hop);
            }
            self.plan.sent();
            // Arm the hedge: if this attempt has no answer by then, the next
            // route starts beside it (budget allowing).
            let hedge_after = hop.route.hedge_after.or(self.plan.chain().hedge_after);
            let hedge_at = match (hedge_after, &shared.hedge_budget) {
                (Some(after), Some(budget)) if self.plan.has_more() && budget.admits_more() => now
                    .checked_add(after)
                    .filter(|at| self.deadline.is_none_or(|d| *at < d)),
                _ => None,
            };
            // Read only to decide on a hedge: no allocation without hedging.
            let head = shared.hedge_budget.as_ref().map(|_| Arc::new(AtomicBool::new(false)));
            let load = hop.route.unit.as_ref().and_then(|u| u.group.track(u.member, now));
            // Built in its box, where it stays until it lands.
            let flight = Box::pin(Flight {
                load,
                i,
                chain,
                position: launch.position,
                hop,
                attempt,
                poll_span: quiet(&span),
                span,
                started: now,
                by_deadline,
                hedge,
                probe,
                fut: fly(
                    svc,
                    must_poll,
                    request,
                    shared.max_response_bytes,
                    limit,
                    head.clone(),
                    self.dialect,
                ),
                head,
                landed: None,
            });
            return Board::Flying(flight, hedge_at);
        }
    }

    /// Acts on an attempt that landed: its one verdict goes to health, the
    /// plan, metrics and the report; an acceptable answer (or a stop with
    /// one) is the caller's, and cancels the others in flight.
    pub(super) fn settle<F, RB>(&mut self, mut flight: Flying<'s, F>, flights: &mut Flights<'s, F>) -> Settled<'s, F>
    where
        F: Future<Output = Landing<S, RB>>,
        RB: Body<Data = Bytes> + Unpin,
        RB::Error: Into<BoxError>,
    {
        let shared = self.shared;
        let landed = flight.as_mut().project();
        if let Some(svc) = landed.landed.as_mut().and_then(|l| l.svc.take()) {
            self.spare = Some((svc, true));
        }
        // When the attempt landed, for its record, its deployment's latency
        // and the time to commit.
        let now = Instant::now();
        if let Some(load) = landed.load.take() {
            // Latency to the answer (a stream's first token), success or not.
            load.land(now);
        }
        let (verdict, record) = judge(&*shared.policy, &flight, now);
        let action = verdict.action;
        let hop = flight.hop;
        flight.record_span(&record);
        crate::metrics::attempt(hop, record.outcome, record.elapsed);
        flight.settle_health(shared, key_rate_limit(hop, record.status, verdict.health));
        if record.outcome.is_failure() {
            tracing::warn!(parent: &flight.span, attempt = %record, "llm fallback attempt failed");
            let rate_limited =
                record.status == Some(http::StatusCode::TOO_MANY_REQUESTS) || record.retry_after.is_some();
            self.plan.failed(flight.i, hop, rate_limited);
        }
        let from = self.plan.chain_name();
        if let Some(to) = self.plan.learn(hop, &verdict) {
            tracing::info!(
                from = &**from,
                to = &**to,
                "llm fallback moved to the content-policy chain"
            );
            self.report.chain = Some(to.clone());
        }
        if record.outcome.is_failure() {
            // The one still in flight gets a new hedge window.
            let after = hop.route.hedge_after.or(self.plan.chain().hedge_after);
            if let (false, Some(after)) = (flights.is_empty(), after) {
                if self.plan.has_more() && shared.hedge_budget.as_ref().is_some_and(|b| b.admits_more()) {
                    flights.arm_hedge_after(after);
                }
            }
        }
        let hedge_won = flight.hedge && record.outcome == Outcome::Served;
        self.report.attempts.push(record);

        let answered = matches!(
            flight.landed,
            Some(Landing {
                result: Some(Ok(_)),
                ..
            })
        );
        match (action, answered) {
            (Action::Accept | Action::Stop, true) => {
                // The first acceptable answer wins: the others are dropped
                // (their connections released) and reported as cancelled.
                self.report.attempts.extend(flights.cancel_all());
                if hedge_won {
                    crate::metrics::hedge_won(hop);
                }
                self.report.resolution = if action == Action::Accept {
                    Resolution::Served
                } else {
                    Resolution::Stopped
                };
                crate::metrics::committed(hop, now.saturating_duration_since(self.started));
                if action == Action::Accept {
                    self.plan.served(hop, now);
                }
                Settled::Won(Winner { flight })
            }
            // Accepting a timeout or an error makes no sense; stopping on
            // one ends the chain with the exhaustion answer.
            (Action::Stop, false) => {
                self.report.attempts.extend(flights.cancel_all());
                let last_sent = self.report.attempts.iter().rev().find(|a| a.outcome.was_sent());
                if last_sent.map(AttemptRecord::outcome) == Some(Outcome::DeadlineExceeded) {
                    self.report.resolution = Resolution::DeadlineExceeded;
                }
                Settled::Ended
            }
            _ => Settled::Onward,
        }
    }

    /// A hedge launched beside an attempt in flight: it spends the budget.
    pub(super) fn spend_hedge(&self) {
        if let Some(budget) = &self.shared.hedge_budget {
            budget.spend();
        }
    }

    /// The caller's answer from the attempt that won.
    ///
    /// By reference, like [`Trip::exhausted`]: the trip (~1.6 KB) is not
    /// moved into the call; it has nothing left to do after either.
    pub(super) fn serve<F, RB>(&mut self, won: Winner<'s, F>) -> Response<ResponseBody<RB>>
    where
        F: Future<Output = Landing<S, RB>>,
        RB: Body<Data = Bytes> + Unpin,
        RB::Error: Into<BoxError>,
    {
        let mut flight = won.flight;
        let f = flight.as_mut().project();
        let (hop, position, span) = (*f.hop, *f.position, &*f.span);
        let Some(Landing {
            result: Some(Ok(answer)),
            ..
        }) = f.landed
        else {
            // Cannot happen: `settle` names a winner only with an answer.
            return self.exhausted();
        };
        let shared = self.shared;
        crate::metrics::request(
            &shared.request_metrics,
            self.report.resolution,
            Some(position),
            self.drill,
            self.dialect,
        );
        served(answer, self.take_report(), hop, span, self.started)
    }

    /// The answer when no attempt served: every route is named.
    pub(super) fn exhausted<RB>(&mut self) -> Response<ResponseBody<RB>> {
        let shared = self.shared;
        crate::metrics::request(
            &shared.request_metrics,
            self.report.resolution,
            None,
            self.drill,
            self.dialect,
        );
        exhausted(self.dialect, self.take_report(), shared.exhaustion_body, self.started)
    }

    /// The report, for the caller's answer. The trip keeps an empty one,
    /// which nothing reads: both callers are done with it.
    fn take_report(&mut self) -> FallbackReport {
        std::mem::replace(&mut self.report, FallbackReport::rejected(Duration::ZERO))
    }

    /// The request's API shape.
    pub(super) fn dialect(&self) -> Dialect {
        self.dialect
    }
}

/// The time an attempt on `hop` has, and whether the chain's deadline (not
/// the route's own timeout) sets it. A stream's limit is the sooner of the
/// route's timeout and its first-token timeout.
fn attempt_limit(hop: &Hop, stream: bool, remaining: Option<Duration>) -> (Option<Duration>, bool) {
    let route_limit = match (hop.route.timeout, hop.route.first_token_timeout) {
        (Some(t), Some(f)) if stream => Some(t.min(f)),
        (None, Some(f)) if stream => Some(f),
        (t, _) => t,
    };
    match (route_limit, remaining) {
        (Some(t), Some(r)) if r <= t => (Some(r), true),
        (Some(t), _) => (Some(t), false),
        (None, Some(r)) => (Some(r), true),
        (None, None) => (None, false),
    }
}

/// How long a key answered with a bare `429` cools down (LiteLLM's default
/// cooldown): a rate limit is the key's, so the next key is used at once
/// rather than after the store's usual run of failures.
pub(crate) const KEY_RATE_LIMIT_COOLDOWN: Duration = Duration::from_secs(5);

/// What health learns of an attempt: a `429` without `Retry-After` on one
/// of an endpoint's several keys cools that key at once.
fn key_rate_limit(hop: &Hop, status: Option<http::StatusCode>, learned: Learned) -> Learned {
    match learned {
        Learned::Failure { retry_after: None }
            if hop.key.is_some() && status == Some(http::StatusCode::TOO_MANY_REQUESTS) =>
        {
            Learned::Failure {
                retry_after: Some(KEY_RATE_LIMIT_COOLDOWN),
            }
        }
        other => other,
    }
}

/// The span a future runs in: `span`, or none when nobody listens to it.
/// Entering a disabled span still costs a call per poll (and a `log` check
/// when tracing's `log` feature is on); `Span::none()` costs nothing.
pub(super) fn quiet(span: &tracing::Span) -> tracing::Span {
    if span.is_disabled() {
        tracing::Span::none()
    } else {
        span.clone()
    }
}

/// Records a route that was not tried.
fn skip(report: &mut FallbackReport, chain: &Arc<str>, i: usize, hop: &Hop, reason: SkipReason) {
    tracing::debug!(model = &*hop.model, reason = %reason, "llm fallback skipped a route");
    crate::metrics::skip(hop, reason.as_str());
    report.attempts.push(AttemptRecord::skipped(chain, i, hop, reason));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Route;

    #[test]
    fn the_sooner_of_timeout_first_token_and_deadline_limits_an_attempt() {
        let s = Duration::from_secs;
        let hop = Hop::new(Route::new("m").timeout(s(30)).first_token_timeout(s(5)));
        assert_eq!(attempt_limit(&hop, false, None), (Some(s(30)), false));
        assert_eq!(attempt_limit(&hop, true, None), (Some(s(5)), false));
        assert_eq!(attempt_limit(&hop, true, Some(s(3))), (Some(s(3)), true));
        assert_eq!(attempt_limit(&hop, false, Some(s(30))), (Some(s(30)), true));
        let bare = Hop::new(Route::new("m"));
        assert_eq!(attempt_limit(&bare, true, None), (None, false));
        assert_eq!(attempt_limit(&bare, false, Some(s(9))), (Some(s(9)), true));
        let first_only = Hop::new(Route::new("m").first_token_timeout(s(5)));
        assert_eq!(attempt_limit(&first_only, false, None), (None, false));
        assert_eq!(attempt_limit(&first_only, true, None), (Some(s(5)), false));
    }
}
