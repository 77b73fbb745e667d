//! The replay loop: one buffered request, tried route by route.
//!
//! `run` only orchestrates its parts, each readable and tested alone:
//!
//! - [`prepare`](mod@prepare): once per request — bound and buffer the body, index it,
//!   read its needs, pick the chain (or refuse the request);
//! - [`plan`]: a pure cursor over the chain that says which route to launch
//!   next and why others are skipped;
//! - [`flights`]: the attempts in the air and the hedge timer, the only
//!   place their futures are polled;
//! - [`verdict`]: the one judgement of an attempt that health, the plan,
//!   metrics and the report read;
//! - [`attempt`]: what one attempt sends; [`answer`]: what the caller gets.
//!
//! Every API-shape question goes to the request's
//! [`Dialect`](crate::dialect::Dialect). `run` is one `async fn` so the
//! tower service and the other front ends share it; the tower service boxes
//! it into its `ResponseFuture`.

mod answer;
mod attempt;
mod flights;
mod plan;
mod prepare;
mod verdict;

use self::answer::{exhausted, internal_error, served};
pub(crate) use self::attempt::attempt_body;
use self::attempt::attempt_request;
use self::flights::{fly, Flight, Flights, Landed, ProbeGuard};
use self::plan::{Plan, Step};
use self::prepare::{prepare, Prepared};
use self::verdict::judge;
use crate::body::ResponseBody;
use crate::capability::SkipReason;
use crate::health::{Admission, DrillConfig, HealthStore, HedgeBudget};
use crate::hop::Hop;
use crate::json::ReplayBody;
use crate::policy::{Action, Policy};
use crate::report::{AttemptRecord, ExhaustionBody, FallbackReport, Outcome, Resolution};
use crate::{Attempt, BoxError, ChainSet};
use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body::Body;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::Service;
use tracing::{field::Empty, Instrument};

/// Response header naming the model that served.
pub(crate) const X_FALLBACK_MODEL: HeaderName = HeaderName::from_static("x-fallback-model");
/// Response header counting the attempts made.
pub(crate) const X_FALLBACK_ATTEMPTS: HeaderName = HeaderName::from_static("x-fallback-attempts");
/// Response header carrying the serving route's label.
pub(crate) const X_FALLBACK_LABEL: HeaderName = HeaderName::from_static("x-fallback-label");

/// Request header naming the chain to use; removed before forwarding.
const X_FALLBACK_CHAIN: HeaderName = HeaderName::from_static("x-fallback-chain");

pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
pub(crate) const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Everything a request needs that does not change between requests; the
/// front ends (tower layer, reqwest middleware) build it the same way.
pub(crate) struct Shared<P> {
    pub(crate) chains: ChainSet,
    /// Some route declares limits or some chain is picked by needs: read
    /// each request's needs. Derived from `chains` once, not per request.
    pub(crate) reads_needs: bool,
    pub(crate) policy: Arc<P>,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_response_bytes: usize,
    /// Cooldowns, shared by every clone.
    pub(crate) health: Option<Arc<dyn HealthStore>>,
    /// Hedging is on when set; it bounds the extra requests.
    pub(crate) hedge_budget: Option<Arc<HedgeBudget>>,
    pub(crate) drills: Option<Arc<DrillConfig>>,
    /// Honour the caller's `x-fallback-chain` header (it is removed either way).
    pub(crate) allow_chain_header: bool,
    /// What the exhaustion answer's body says.
    pub(crate) exhaustion_body: ExhaustionBody,
    /// Removed from the caller's request for any route on another endpoint.
    pub(crate) credential_headers: Arc<[HeaderName]>,
    /// Request counters' handles, shared by clones.
    pub(crate) request_metrics: Arc<crate::metrics::RequestMetrics>,
}

impl<P> Shared<P> {
    pub(crate) fn new(chains: ChainSet, policy: P) -> Self {
        Shared {
            reads_needs: chains.reads_needs(),
            chains,
            policy: Arc::new(policy),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            health: None,
            hedge_budget: None,
            drills: None,
            allow_chain_header: false,
            exhaustion_body: ExhaustionBody::Full,
            credential_headers: Arc::from(crate::native::CREDENTIAL_HEADERS.as_slice()),
            request_metrics: Arc::default(),
        }
    }

    /// Adds `name` to the credential headers removed for routes on another
    /// endpoint (no duplicates).
    pub(crate) fn add_credential_header(&mut self, name: HeaderName) {
        if !self.credential_headers.contains(&name) {
            let mut names = self.credential_headers.to_vec();
            names.push(name);
            self.credential_headers = Arc::from(names);
        }
    }

    /// The same settings with another policy.
    pub(crate) fn with_policy<Q>(&self, policy: Q) -> Shared<Q> {
        self.with_policy_arc(Arc::new(policy))
    }
}

impl<P> Clone for Shared<P> {
    fn clone(&self) -> Self {
        self.with_policy_arc(self.policy.clone())
    }
}

impl<P> Shared<P> {
    fn with_policy_arc<Q>(&self, policy: Arc<Q>) -> Shared<Q> {
        Shared {
            chains: self.chains.clone(),
            reads_needs: self.reads_needs,
            policy,
            max_body_bytes: self.max_body_bytes,
            max_response_bytes: self.max_response_bytes,
            health: self.health.clone(),
            hedge_budget: self.hedge_budget.clone(),
            drills: self.drills.clone(),
            allow_chain_header: self.allow_chain_header,
            exhaustion_body: self.exhaustion_body,
            credential_headers: self.credential_headers.clone(),
            request_metrics: self.request_metrics.clone(),
        }
    }
}

pub(crate) async fn run<S, B, P, RB>(shared: Arc<Shared<P>>, svc: S, req: Request<B>) -> Response<ResponseBody<RB>>
where
    S: Service<Request<ReplayBody>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    P: Policy,
    B: Body,
    B::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Unpin,
    RB::Error: Into<BoxError>,
{
    let started = Instant::now();
    let span = tracing::info_span!(
        "llm_fallback.request",
        gen_ai.operation.name = "chat",
        gen_ai.request.model = Empty,
        gen_ai.response.model = Empty,
        fallback.attempts = Empty,
        fallback.resolution = Empty,
    );
    let work = async {
        let Prepared {
            parts,
            body,
            index,
            mut report,
            needs,
            chain_name,
            chain,
            deadline,
            guard,
            drill,
            dialect,
        } = match prepare(&shared, req, started).await {
            Ok(prepared) => prepared,
            Err(refused) => return refused,
        };
        let mut plan = Plan::new(&shared.chains, chain_name, chain, drill, needs.as_ref(), guard);
        if plan.guard_inactive() {
            tracing::warn!("llm fallback price guard inactive: the primary's price is unknown");
        }
        // Hedges need a second service; clone one only when hedging is on.
        let template: Option<S> = shared.hedge_budget.as_ref().map(|b| {
            b.request();
            svc.clone()
        });
        let mut spare: Option<(S, bool)> = Some((svc, false));
        let mut flights = Flights::new();
        let mut caller_parts = Some(parts);

        'chain: loop {
            // Launch the next route when nothing is in flight, or when the
            // hedge timer of the ones in flight fired before they committed.
            let hedge_now = flights.hedge_due();
            if flights.is_empty() || hedge_now {
                flights.disarm_hedge();
                let mut launched = false;
                while !launched {
                    let mut admit = |route: &Hop| {
                        let health = shared.health.as_ref();
                        health.map_or(Admission::Open, |h| h.admit(&route.health_key, Instant::now()))
                    };
                    let admit: Option<&mut dyn FnMut(&Hop) -> Admission> = match shared.health {
                        Some(_) => Some(&mut admit),
                        None => None,
                    };
                    let hop = match plan.next(Instant::now(), !flights.is_empty(), admit) {
                        Step::Launch(hop) => hop,
                        Step::Skip { index, route, reason } => {
                            skip_route(&mut report, plan.chain_name(), index, route, reason);
                            continue;
                        }
                        Step::Done => break,
                    };
                    let (i, route, chain_name) = (hop.index, hop.route, hop.chain);
                    if hop.forced {
                        // This attempt's record replaces the route's skip.
                        report
                            .attempts
                            .retain(|a| !(a.index == i && a.outcome == Outcome::Skipped && a.chain == *chain_name));
                    }
                    let probe = match (&shared.health, hop.probe) {
                        (Some(health), true) => Some(ProbeGuard::new(health.clone(), route)),
                        _ => None,
                    };
                    let now = Instant::now();
                    let remaining = deadline.map(|d| d.saturating_duration_since(now));
                    if remaining == Some(Duration::ZERO) {
                        if !flights.is_empty() {
                            break; // no new attempt; the one in flight may still answer
                        }
                        report.resolution = Resolution::DeadlineExceeded;
                        break 'chain;
                    }
                    let route_limit = match (route.route.timeout, route.route.first_token_timeout) {
                        (Some(t), Some(f)) if index.stream => Some(t.min(f)),
                        (None, Some(f)) if index.stream => Some(f),
                        (t, _) => t,
                    };
                    let (limit, by_deadline) = match (route_limit, remaining) {
                        (Some(t), Some(r)) if r <= t => (Some(r), true),
                        (Some(t), _) => (Some(t), false),
                        (None, Some(r)) => (Some(r), true),
                        (None, None) => (None, false),
                    };
                    let attempt = Attempt {
                        index: i,
                        model: route.model.clone(),
                        label: route.label.clone(),
                        timeout: limit,
                    };
                    let replay = match attempt_body(&body, &index, route) {
                        Ok(replay) => replay,
                        // The edits come from the scanner's spans; this is a
                        // bug of the crate, answered without sending anything
                        // rather than with a panic or a mangled body.
                        Err(bad) => return internal_error(dialect, &bad, started),
                    };
                    // The last attempt this request can make (no route after
                    // it, no switch to a content-policy chain) takes the
                    // caller's parts; earlier ones take a copy.
                    let parts = if !plan.has_more() && !plan.may_switch() {
                        caller_parts.take()
                    } else {
                        caller_parts.clone()
                    };
                    let Some(parts) = parts else {
                        break; // cannot happen: nothing launches after the last attempt
                    };
                    let request = attempt_request(
                        parts,
                        replay,
                        attempt.clone(),
                        route,
                        &shared.credential_headers,
                        dialect,
                    );
                    let span = tracing::info_span!(
                        "llm_fallback.attempt",
                        fallback.attempt = i,
                        fallback.label = attempt.label().unwrap_or(""),
                        fallback.hedge = !flights.is_empty(),
                        gen_ai.request.model = attempt.model(),
                        gen_ai.response.model = Empty,
                        http.response.status_code = Empty,
                        fallback.outcome = Empty,
                        fallback.latency_ms = Empty,
                        error.type = Empty,
                    );
                    // The caller's service was polled ready by `poll_ready`;
                    // a service back from an attempt, or a clone for a
                    // hedge, is polled ready again before its call.
                    let (svc, must_poll) = match spare.take() {
                        Some(pair) => pair,
                        None => (template.clone().expect("a hedge is only armed with a template"), true),
                    };
                    let hedge = !flights.is_empty();
                    if hedge {
                        crate::metrics::hedge_started(&route.model);
                    }
                    let head = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let fut = Box::pin(
                        fly(
                            svc,
                            must_poll,
                            request,
                            shared.max_response_bytes,
                            limit,
                            head.clone(),
                            dialect,
                        )
                        .instrument(span.clone()),
                    );
                    plan.sent();
                    let hedge_after = route.route.hedge_after.or(plan.chain().hedge_after);
                    flights.push(Flight {
                        i,
                        chain: chain_name,
                        position: hop.position,
                        route,
                        attempt,
                        span,
                        started: now,
                        by_deadline,
                        hedge,
                        probe,
                        head,
                        fut,
                    });
                    launched = true;
                    // Arm the hedge: if this attempt has no answer by then,
                    // the next route starts beside it (budget allowing).
                    if let (Some(after), Some(budget)) = (hedge_after, &shared.hedge_budget) {
                        if plan.has_more() && budget.admits_more() {
                            let at = now.checked_add(after);
                            if let Some(at) = at.filter(|at| deadline.is_none_or(|d| *at < d)) {
                                flights.arm_hedge_at(at);
                            }
                        }
                    }
                }
                if flights.is_empty() {
                    break 'chain;
                }
                if hedge_now && flights.len() > 1 {
                    if let Some(budget) = &shared.hedge_budget {
                        budget.spend();
                    }
                }
            }

            // Wait for the first attempt to finish, or for the hedge timer.
            let (flight, (svc, result)) = match flights.land().await {
                Landed::Attempt(flight, out) => (flight, out),
                // The hedge timer fired: launch beside the one in flight.
                Landed::HedgeTimer => continue,
            };
            spare = Some((svc, true));
            let (verdict, answer, record) = judge(&*shared.policy, &flight, result);
            let action = verdict.action;
            flight.record_span(&record);
            crate::metrics::attempt(flight.route, record.outcome, record.elapsed);
            flight.settle_health(&shared, verdict.health);
            let route = flight.route;
            if record.outcome.is_failure() {
                tracing::warn!(parent: &flight.span, attempt = %record, "llm fallback attempt failed");
            }
            let from = plan.chain_name();
            if let Some(to) = plan.learn(route, &verdict) {
                tracing::info!(
                    from = &**from,
                    to = &**to,
                    "llm fallback moved to the content-policy chain"
                );
                report.chain = Some(to.clone());
            }
            if record.outcome.is_failure() {
                // The one still in flight gets a new hedge window.
                let after = route.route.hedge_after.or(plan.chain().hedge_after);
                if let (false, Some(after)) = (flights.is_empty(), after) {
                    if plan.has_more() && shared.hedge_budget.as_ref().is_some_and(|b| b.admits_more()) {
                        flights.arm_hedge_after(after);
                    }
                }
            }
            let hedge_won = flight.hedge && record.outcome == Outcome::Served;
            report.attempts.push(record);

            match (action, answer) {
                (Action::Accept | Action::Stop, Some(answer)) => {
                    // The first acceptable answer wins: the others are dropped
                    // (their connections released) and reported as cancelled.
                    report.attempts.extend(flights.cancel_all());
                    if hedge_won {
                        crate::metrics::hedge_won(&route.model);
                    }
                    report.resolution = if action == Action::Accept {
                        Resolution::Served
                    } else {
                        Resolution::Stopped
                    };
                    crate::metrics::committed(route, started.elapsed());
                    crate::metrics::request(&shared.request_metrics, report.resolution, Some(flight.position), drill);
                    return served(answer, report, route, &flight.span, started);
                }
                // Accepting a timeout or an error makes no sense; stopping on
                // one ends the chain with the exhaustion answer.
                (Action::Stop, None) => {
                    report.attempts.extend(flights.cancel_all());
                    if report
                        .attempts
                        .iter()
                        .rev()
                        .find(|a| a.outcome.was_sent())
                        .map(AttemptRecord::outcome)
                        == Some(Outcome::DeadlineExceeded)
                    {
                        report.resolution = Resolution::DeadlineExceeded;
                    }
                    break;
                }
                _ => {}
            }
        }
        crate::metrics::request(&shared.request_metrics, report.resolution, None, drill);
        exhausted(dialect, report, shared.exhaustion_body, started)
    };
    let resp = work.instrument(span.clone()).await;
    if let Some(report) = resp
        .extensions()
        .get::<FallbackReport>()
        .filter(|_| !span.is_disabled())
    {
        span.record("fallback.attempts", report.attempts.len());
        span.record("fallback.resolution", report.resolution.as_str());
        if !report.served_model().is_empty() {
            span.record("gen_ai.response.model", report.served_model());
        }
    }
    resp
}

/// Records a route that was not tried.
fn skip_route(report: &mut FallbackReport, chain: &Arc<str>, i: usize, route: &Hop, reason: SkipReason) {
    tracing::debug!(model = &*route.model, reason = %reason, "llm fallback skipped a route");
    crate::metrics::skip(&route.model, reason.as_str());
    report.attempts.push(AttemptRecord::skipped(chain, i, route, reason));
}
