//! The replay loop: one buffered request, tried route by route.
//!
//! Written as one `async fn` so the tower service and the other front ends
//! share it; the tower service boxes it into its `ResponseFuture`.

use crate::body::{collect_bounded, CollectError, ResponseBody};
use crate::capability::{self, PriceGuard, SkipReason};
use crate::health::{Admission, DrillConfig, HealthEvent, HealthStore, HedgeBudget};
use crate::inspect::BodyFacts;
use crate::json::{BadEdits, Edit, ReplayBody};
use crate::native;
use crate::policy::{self, Action, Observed, Policy, ResponseInfo};
use crate::report::UpstreamError;
use crate::report::{AttemptRecord, Exhausted, ExhaustionBody, FallbackReport, Outcome, Resolution};
use crate::request::{index_request, index_request_with_media, removals, BadRequest, MemberSpan, RequestIndex};
use crate::stream::{CommittedStream, Signal, SseTracker};
use crate::{Attempt, BoxError, ChainName, ChainSet, Route};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use serde_json::json;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tracing::{field::Empty, Instrument};

/// Response header naming the model that served.
pub(crate) const X_FALLBACK_MODEL: HeaderName = HeaderName::from_static("x-fallback-model");
/// Response header counting the attempts made.
pub(crate) const X_FALLBACK_ATTEMPTS: HeaderName = HeaderName::from_static("x-fallback-attempts");
/// Response header carrying the serving route's label.
pub(crate) const X_FALLBACK_LABEL: HeaderName = HeaderName::from_static("x-fallback-label");

/// Request header naming the chain to use; removed before forwarding.
const X_FALLBACK_CHAIN: HeaderName = HeaderName::from_static("x-fallback-chain");

/// Asks OpenRouter to report its own attempts in the body.
const X_OPENROUTER_METADATA: HeaderName = HeaderName::from_static("x-openrouter-metadata");

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

/// An upstream response after the engine looked at it.
enum Looked<RB> {
    /// Buffered whole and inspected.
    Full(Bytes),
    /// An event stream that reached its first content: the frames read so
    /// far, the rest of the body, and what was seen.
    Committed(VecDeque<Bytes>, RB, Box<SseTracker>),
    /// Larger than `max_response_bytes`: the part read, then the rest.
    Overflow(Bytes, RB),
}

struct Answer<RB> {
    parts: http::response::Parts,
    body: Looked<RB>,
    facts: BodyFacts,
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
        let (mut parts, body) = req.into_parts();

        // Bound before buffering: a declared length over the limit is refused
        // without reading a byte.
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > shared.max_body_bytes as u64) {
            return too_large(shared.max_body_bytes, started);
        }
        let body = std::pin::pin!(body);
        let mut body = body;
        let body = match collect_bounded(&mut body, shared.max_body_bytes).await {
            Ok(b) => b,
            Err(CollectError::TooLarge { .. }) => return too_large(shared.max_body_bytes, started),
            Err(CollectError::Body(e)) => {
                let e: BoxError = e.into();
                return reject(
                    StatusCode::BAD_REQUEST,
                    &BadRequest {
                        code: "unreadable_body",
                        param: None,
                        message: format!("the request body could not be read: {e}"),
                    },
                    started,
                );
            }
        };
        let mut index = match if shared.reads_needs {
            index_request_with_media(&body)
        } else {
            index_request(&body)
        } {
            Ok(i) => i,
            Err(bad) => return reject(StatusCode::BAD_REQUEST, &bad, started),
        };
        let current = tracing::Span::current();
        if !current.is_disabled() {
            current.record("gen_ai.request.model", index.requested_model.as_str());
        }

        // Each attempt gets its own Content-Length; a stale length or chunked
        // framing from the caller must not reach the upstream.
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.headers.remove(header::EXPECT);

        let mut report = FallbackReport {
            requested_model: Some(std::mem::take(&mut index.requested_model)),
            served_model: None,
            provider: None,
            attempts: Vec::with_capacity(shared.chains.default_chain().routes().len()),
            resolution: Resolution::Exhausted,
            usage: None,
            chain: None,
            drill: false,
            elapsed: Duration::ZERO,
        };
        // Needs are only read when some route declares limits or some chain
        // is picked by them.
        let needs = shared.reads_needs.then(|| capability::detect(&body, &index));
        // Removed always; read only when the layer allows callers to pick.
        let header_choice = parts
            .headers
            .remove(X_FALLBACK_CHAIN)
            .filter(|_| shared.allow_chain_header);
        let explicit = match (parts.extensions.get::<ChainName>(), &header_choice) {
            (Some(ChainName(name)), _) => Some(name.as_str()),
            (None, Some(v)) => Some(v.to_str().unwrap_or("\u{fffd}")),
            (None, None) => None,
        };
        let (mut chain_name, mut chain) = match shared.chains.select(explicit, needs.as_ref()) {
            Ok(picked) => picked,
            Err(message) => {
                let bad = BadRequest {
                    code: "unknown_chain",
                    param: None,
                    message,
                };
                return reject(StatusCode::BAD_REQUEST, &bad, started);
            }
        };
        report.chain = Some(chain_name.clone());
        // A deadline too far to be an instant is no deadline.
        let deadline = chain.get_deadline().and_then(|d| started.checked_add(d));
        let guard = parts
            .extensions
            .get::<PriceGuard>()
            .copied()
            .or(chain.get_price_guard());
        let cap = guard.and_then(|g| chain.price_cap(g));
        if guard.is_some() && cap.is_none() {
            tracing::warn!("llm fallback price guard inactive: the primary's price is unknown");
        }
        // After a `context_length_exceeded`: only larger windows are worth a try.
        let mut overflowed_window: Option<u64> = None;
        // The drill header is never forwarded, whether drills are on or not.
        let drill = match &shared.drills {
            Some(d) => d.pick(&mut parts.headers),
            None => {
                parts.headers.remove(crate::health::X_FALLBACK_DRILL);
                false
            }
        };
        let first_chain = chain_name;
        // Routes of the chains this request left (a content-policy move), so
        // a route's position counts from the request's first chain.
        let mut chain_offset = 0usize;
        // Hedges need a second service; clone one only when hedging is on.
        let template: Option<S> = shared.hedge_budget.as_ref().map(|b| {
            b.request();
            svc.clone()
        });
        report.drill = drill;
        // Routes skipped because they cool down: tried anyway (soonest first)
        // if nothing else could be sent.
        let mut cooling: Vec<(Instant, usize)> = Vec::new();
        let mut forced: Option<usize> = None;
        let mut sent = 0usize;
        let mut spare: Option<(S, bool)> = Some((svc, false));
        let mut flights: Vec<Flight<'_, _>> = Vec::new();
        let mut caller_parts = Some(parts);
        let mut hedge_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut next = 0;

        'chain: loop {
            // Launch the next route when nothing is in flight, or when the
            // hedge timer of the one in flight fired.
            // A non-streaming attempt whose response head arrived has
            // committed: the hedge is not needed (its body is on the way).
            let timer_fired = hedge_timer.as_mut().is_some_and(|t| t.is_elapsed());
            let committed = flights
                .iter()
                .any(|f| f.head.load(std::sync::atomic::Ordering::Acquire));
            if timer_fired && committed {
                hedge_timer = None;
            }
            let hedge_now = timer_fired && !committed;
            if flights.is_empty() || hedge_now {
                hedge_timer = None;
                let mut launched = false;
                while !launched {
                    let (i, route) = match chain.routes().get(next) {
                        Some(route) => {
                            next += 1;
                            (next - 1, route)
                        }
                        None => {
                            // Nothing was sent and every skip was a cooldown: try
                            // the route that recovers first rather than fail untried.
                            match (sent, forced, cooling.iter().min()) {
                                (0, None, Some(&(_, i))) if flights.is_empty() => {
                                    forced = Some(i);
                                    report.attempts.retain(|a| {
                                        !(a.index == i && a.outcome == Outcome::Skipped && a.chain == *chain_name)
                                    });
                                    (i, &chain.routes()[i])
                                }
                                _ => break,
                            }
                        }
                    };
                    let is_forced = forced == Some(i) && sent == 0;
                    let skip = if is_forced {
                        None
                    } else {
                        (drill && i == 0 && Arc::ptr_eq(chain_name, first_chain))
                            .then_some(SkipReason::Drill)
                            .or_else(|| needs.as_ref().and_then(|n| route.unfit(n)))
                            .or_else(|| {
                                let failed_window = overflowed_window?;
                                (route.get_context_window()? <= failed_window)
                                    .then_some(SkipReason::NotLargerWindow { failed_window })
                            })
                            .or_else(|| {
                                let cap = cap?;
                                let primary_exempt = i == 0 && guard == Some(PriceGuard::NotAbovePrimary);
                                match route.get_price() {
                                    _ if primary_exempt => None,
                                    Some(p) if p.within(cap) => None,
                                    price => Some(SkipReason::PriceCap { price }),
                                }
                            })
                    };
                    if let Some(reason) = skip {
                        skip_route(&mut report, chain_name, i, route, reason);
                        continue;
                    }
                    // Health: a cooling route is skipped; one that just
                    // recovered lets this request through as its probe.
                    let mut probe = None;
                    if let Some(health) = &shared.health {
                        match health.admit(route.health_key(), Instant::now()) {
                            Admission::Open => {}
                            Admission::Probe => probe = Some(ProbeGuard::new(health.clone(), route)),
                            Admission::Cooling { until } if !is_forced => {
                                cooling.push((until, i));
                                let remaining = until.saturating_duration_since(Instant::now());
                                skip_route(&mut report, chain_name, i, route, SkipReason::Cooling { remaining });
                                continue;
                            }
                            Admission::Cooling { .. } => {}
                        }
                    }
                    let now = Instant::now();
                    let remaining = deadline.map(|d| d.saturating_duration_since(now));
                    if remaining == Some(Duration::ZERO) {
                        if !flights.is_empty() {
                            break; // no new attempt; the one in flight may still answer
                        }
                        report.resolution = Resolution::DeadlineExceeded;
                        break 'chain;
                    }
                    let route_limit = match (route.get_timeout(), route.get_first_token_timeout()) {
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
                        model: route.model_arc().clone(),
                        label: route.label_arc().cloned(),
                        timeout: limit,
                    };
                    let replay = match attempt_body(&body, &index, route) {
                        Ok(replay) => replay,
                        // The edits come from the scanner's spans; this is a
                        // bug of the crate, answered without sending anything
                        // rather than with a panic or a mangled body.
                        Err(bad) => return internal_error(&bad, started),
                    };
                    // The last attempt this request can make (no route after
                    // it, no switch to a content-policy chain) takes the
                    // caller's parts; earlier ones take a copy.
                    let switchable = shared
                        .chains
                        .content_policy_chain()
                        .is_some_and(|(n, _)| !Arc::ptr_eq(n, chain_name));
                    let parts = if next >= chain.routes().len() && !switchable {
                        caller_parts.take()
                    } else {
                        caller_parts.clone()
                    };
                    let Some(parts) = parts else {
                        break; // cannot happen: nothing launches after the last attempt
                    };
                    let request = attempt_request(parts, replay, attempt.clone(), route, &shared.credential_headers);
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
                        crate::metrics::hedge_started(route.model_arc());
                    }
                    let head = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let fut = Box::pin(
                        fly(svc, must_poll, request, shared.max_response_bytes, limit, head.clone())
                            .instrument(span.clone()),
                    );
                    sent += 1;
                    let hedge_after = route.get_hedge_after().or(chain.get_hedge_after());
                    flights.push(Flight {
                        i,
                        chain: chain_name,
                        position: chain_offset + i,
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
                        if next < chain.routes().len() && budget.admits_more() {
                            let at = now.checked_add(after);
                            if let Some(at) = at.filter(|at| deadline.is_none_or(|d| *at < d)) {
                                hedge_timer = Some(Box::pin(tokio::time::sleep_until(at)));
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
            let event = std::future::poll_fn(|cx| {
                for (k, f) in flights.iter_mut().enumerate() {
                    if let Poll::Ready(out) = f.fut.as_mut().poll(cx) {
                        return Poll::Ready(Some((k, out)));
                    }
                }
                match hedge_timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(None),
                    _ => Poll::Pending,
                }
            })
            .await;
            let Some((k, (svc, result))) = event else {
                continue; // the hedge timer fired: launch beside the one in flight
            };
            let flight = flights.swap_remove(k);
            spare = Some((svc, true));
            let (action, answer, record) = judge(&*shared.policy, &flight, result);
            // The deadline ends the chain whatever the policy thinks of the timeout.
            let action = if record.outcome == Outcome::DeadlineExceeded {
                Action::Stop
            } else {
                action
            };
            // Recording into a span nobody listens to still costs a call per
            // field (and a `log` check when tracing's `log` feature is on).
            if !flight.span.is_disabled() {
                flight.span.record("fallback.outcome", record.outcome.as_str());
                flight
                    .span
                    .record("fallback.latency_ms", record.elapsed.as_secs_f64() * 1000.0);
                if let Some(s) = record.status {
                    flight.span.record("http.response.status_code", s.as_u16());
                }
                if let Some(t) = record.error_type() {
                    flight.span.record("error.type", t);
                }
            }
            crate::metrics::attempt(flight.route, record.outcome, record.elapsed);
            flight.settle_health(&shared, &record);
            let route = flight.route;
            if record.outcome.is_failure() {
                tracing::warn!(parent: &flight.span, attempt = %record, "llm fallback attempt failed");
                if record.error.as_ref().is_some_and(UpstreamError::is_context_length) {
                    overflowed_window = overflowed_window.max(route.get_context_window());
                }
                let blocked = record.error.as_ref().is_some_and(UpstreamError::is_moderation);
                if let Some((name, policy_chain)) = shared
                    .chains
                    .content_policy_chain()
                    .filter(|(n, _)| blocked && !Arc::ptr_eq(n, chain_name))
                {
                    tracing::info!(
                        from = &**chain_name,
                        to = &**name,
                        "llm fallback moved to the content-policy chain"
                    );
                    chain_offset += chain.routes().len();
                    (chain_name, chain) = (name, policy_chain);
                    report.chain = Some(name.clone());
                    next = 0;
                }
                // The one still in flight gets a new hedge window.
                let after = route.get_hedge_after().or(chain.get_hedge_after());
                if let (false, Some(after)) = (flights.is_empty(), after) {
                    if next < chain.routes().len() && shared.hedge_budget.as_ref().is_some_and(|b| b.admits_more()) {
                        hedge_timer = Some(Box::pin(tokio::time::sleep(after)));
                    }
                }
            }
            let hedge_won = flight.hedge && record.outcome == Outcome::Served;
            report.attempts.push(record);

            match (action, answer) {
                (Action::Accept | Action::Stop, Some(answer)) => {
                    // The first acceptable answer wins: the others are dropped
                    // (their connections released) and reported as cancelled.
                    for other in flights.drain(..) {
                        report.attempts.push(other.cancelled());
                    }
                    if hedge_won {
                        crate::metrics::hedge_won(route.model_arc());
                    }
                    report.resolution = if action == Action::Accept {
                        Resolution::Served
                    } else {
                        Resolution::Stopped
                    };
                    let facts = answer.facts;
                    report.served_model = Some(facts.model.unwrap_or_else(|| route.model().to_owned()));
                    report.provider = facts.provider;
                    report.usage = facts.usage;
                    flight.span.record("gen_ai.response.model", report.served_model());
                    crate::metrics::committed(route, started.elapsed());
                    crate::metrics::request(&shared.request_metrics, report.resolution, Some(flight.position), drill);
                    let mut parts = answer.parts;
                    let (body, handle) = match answer.body {
                        Looked::Full(b) => (ResponseBody::full(b), None),
                        Looked::Overflow(head, rb) => (ResponseBody::inner(Some(head), rb), None),
                        Looked::Committed(held, rb, tracker) => {
                            // An error chunk may be appended if the stream breaks.
                            parts.headers.remove(header::CONTENT_LENGTH);
                            report.elapsed = started.elapsed();
                            let (body, handle) = CommittedStream::new(
                                held,
                                rb,
                                *tracker,
                                route.get_idle_timeout(),
                                report.clone(),
                                started,
                            );
                            (ResponseBody::stream(body), Some(handle))
                        }
                    };
                    let mut resp = finish(Response::from_parts(parts, body), report, started, Some(route));
                    if let Some(handle) = handle {
                        resp.extensions_mut().insert(handle);
                    }
                    return resp;
                }
                // Accepting a timeout or an error makes no sense; stopping on
                // one ends the chain with the exhaustion answer.
                (Action::Stop, None) => {
                    for other in flights.drain(..) {
                        report.attempts.push(other.cancelled());
                    }
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
        exhausted(report, shared.exhaustion_body, started)
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

/// One attempt in flight.
struct Flight<'r, F> {
    /// The route's index in its chain, and the chain.
    i: usize,
    chain: &'r Arc<str>,
    /// Its position among every route the request could go through
    /// (counting the chains it left).
    position: usize,
    route: &'r Route,
    attempt: Attempt,
    span: tracing::Span,
    started: Instant,
    by_deadline: bool,
    /// Started beside another attempt.
    hedge: bool,
    /// This attempt is its route's half-open probe.
    probe: Option<ProbeGuard>,
    /// Set once the attempt has committed (a non-streaming response head,
    /// or a stream's first content), which rules out hedging it.
    head: Arc<std::sync::atomic::AtomicBool>,
    fut: Pin<Box<F>>,
}

impl<F> Flight<'_, F> {
    /// The record of an attempt dropped because another one won.
    fn cancelled(self) -> AttemptRecord {
        let mut record = AttemptRecord::new(self.chain, self.i, self.route, Outcome::Cancelled);
        record.hedged = self.hedge;
        record.elapsed = self.started.elapsed();
        crate::metrics::attempt(self.route, Outcome::Cancelled, record.elapsed);
        // Dropping `self` drops the attempt's future (closing its connection)
        // and releases a probe it held.
        record
    }

    /// Tells the health store how the attempt went.
    fn settle_health<P>(&self, shared: &Shared<P>, record: &AttemptRecord) {
        let Some(health) = &shared.health else { return };
        let event = match record.outcome {
            Outcome::Served => HealthEvent::Success,
            Outcome::Transport | Outcome::Timeout | Outcome::ErrorInBody => HealthEvent::Failure { retry_after: None },
            Outcome::HttpError => {
                let status = record.status.map_or(0, |s| s.as_u16());
                let model_fault = status >= 500 || status == 429 || status == 408;
                if !model_fault {
                    HealthEvent::Released
                } else {
                    let retry_after = record.retry_after.filter(|_| status == 429 || status == 503);
                    HealthEvent::Failure { retry_after }
                }
            }
            _ => HealthEvent::Released,
        };
        match &self.probe {
            Some(probe) => probe.settle(event),
            None if event != HealthEvent::Released => health.record(self.route.health_key(), event, Instant::now()),
            None => {}
        }
    }
}

/// Holds a route's half-open probe; dropping it unsettled (the attempt was
/// cancelled) releases the probe so another request can take it.
struct ProbeGuard {
    health: Arc<dyn HealthStore>,
    key: Arc<str>,
    settled: std::sync::atomic::AtomicBool,
}

impl ProbeGuard {
    fn new(health: Arc<dyn HealthStore>, route: &Route) -> Self {
        ProbeGuard {
            health,
            key: route.health_key_arc().clone(),
            settled: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn settle(&self, event: HealthEvent) {
        if !self.settled.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.health.record(&self.key, event, Instant::now());
        }
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.settle(HealthEvent::Released);
    }
}

/// Records a route that was not tried.
fn skip_route(report: &mut FallbackReport, chain: &Arc<str>, i: usize, route: &Route, reason: SkipReason) {
    tracing::debug!(model = route.model(), reason = %reason, "llm fallback skipped a route");
    crate::metrics::skip(route.model_arc(), reason.as_str());
    report.attempts.push(AttemptRecord::skipped(chain, i, route, reason));
}

/// One attempt: wait for readiness, send, and look at the answer, within
/// `limit`. Hands the service back for the next attempt.
async fn fly<S, RB>(
    mut svc: S,
    poll_ready: bool,
    request: Request<ReplayBody>,
    max_response_bytes: usize,
    limit: Option<Duration>,
    head: Arc<std::sync::atomic::AtomicBool>,
) -> (S, Option<Result<Answer<RB>, BoxError>>)
where
    S: Service<Request<ReplayBody>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Unpin,
    RB::Error: Into<BoxError>,
{
    let call = send(&mut svc, poll_ready, request, max_response_bytes, &head);
    let out = match limit {
        Some(l) => tokio::time::timeout(l, call).await.ok(),
        None => Some(call.await),
    };
    (svc, out)
}

/// What the policy makes of a finished attempt, and its record.
fn judge<P: Policy, F, RB>(
    policy: &P,
    flight: &Flight<'_, F>,
    result: Option<Result<Answer<RB>, BoxError>>,
) -> (Action, Option<Answer<RB>>, AttemptRecord) {
    let route = flight.route;
    let attempt = &flight.attempt;
    let mut record = AttemptRecord::new(flight.chain, flight.i, route, Outcome::Timeout);
    record.hedged = flight.hedge;
    record.elapsed = flight.started.elapsed();
    let (action, answer) = match result {
        None => {
            record.outcome = if flight.by_deadline {
                Outcome::DeadlineExceeded
            } else {
                Outcome::Timeout
            };
            (policy.classify(attempt, &Observed::Timeout), None)
        }
        Some(Err(e)) => {
            record.outcome = Outcome::Transport;
            record.transport = Some(error_chain(&*e));
            (policy.classify(attempt, &Observed::Error(&*e)), None)
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
            record.upstream_fell_back = answer.parts.status.is_success()
                && answer.facts.model.as_deref().is_some_and(|served| {
                    native::upstream_fell_back(route.model(), route.get_native_fallbacks(), served)
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
            (action, Some(answer))
        }
    };
    (action, answer, record)
}

/// Sends one attempt and, unless it is an event stream, buffers its body so
/// the policy can see an error hidden in an HTTP 200.
async fn send<S, RB>(
    svc: &mut S,
    poll_ready: bool,
    request: Request<ReplayBody>,
    max_response_bytes: usize,
    head: &std::sync::atomic::AtomicBool,
) -> Result<Answer<RB>, BoxError>
where
    S: Service<Request<ReplayBody>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Unpin,
    RB::Error: Into<BoxError>,
{
    // The service handed to the future was polled ready by our `poll_ready`;
    // after a call it must be polled ready again before the next one.
    if poll_ready {
        svc.ready().await.map_err(Into::into)?;
    }
    let resp = svc.call(request).await.map_err(Into::into)?;
    let (parts, mut rb) = resp.into_parts();
    if parts.status.is_success() && policy::is_event_stream(&parts.headers) {
        // A stream commits at its first content, not at its head.
        return until_first_token(parts, rb, max_response_bytes).await;
    }
    head.store(true, std::sync::atomic::Ordering::Release);
    match collect_bounded(&mut rb, max_response_bytes).await {
        Ok(bytes) => {
            let facts = BodyFacts::inspect(&bytes);
            Ok(Answer {
                parts,
                body: Looked::Full(bytes),
                facts,
            })
        }
        Err(CollectError::TooLarge { head }) => Ok(Answer {
            parts,
            body: Looked::Overflow(head, rb),
            facts: BodyFacts::default(),
        }),
        Err(CollectError::Body(e)) => Err(e.into()),
    }
}

/// Reads an event stream up to its commit point, holding what was read.
/// Keep-alives are held (and later passed on) but are not progress. An error
/// chunk or the end of the stream before the first content is an answer the
/// policy sees as an error inside an HTTP 200, like a non-streaming one.
async fn until_first_token<RB>(
    parts: http::response::Parts,
    mut rb: RB,
    max_held_bytes: usize,
) -> Result<Answer<RB>, BoxError>
where
    RB: Body<Data = Bytes> + Unpin,
    RB::Error: Into<BoxError>,
{
    let mut tracker = SseTracker::default();
    let mut held = VecDeque::new();
    let mut held_len = 0usize;
    let signal = loop {
        match rb.frame().await {
            None => {
                break match tracker.finish() {
                    Signal::None => Signal::Error(crate::report::UpstreamError {
                        message: Some("the stream ended before its first token".into()),
                        ..Default::default()
                    }),
                    s => s,
                }
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                let s = tracker.feed(&data);
                held_len += data.len();
                held.push_back(data);
                // Holding more than the response limit would let a stream of
                // keep-alives grow without bound: commit and pass it on.
                if s != Signal::None || held_len > max_held_bytes {
                    break if s == Signal::None { Signal::Commit } else { s };
                }
            }
        }
    };
    match signal {
        Signal::Error(error) => {
            let mut body = BytesMut::with_capacity(held_len);
            held.iter().for_each(|b| body.extend_from_slice(b));
            let facts = BodyFacts {
                json: true,
                model: tracker.model.take(),
                provider: tracker.provider.take(),
                error: Some(error),
                ..BodyFacts::default()
            };
            Ok(Answer {
                parts,
                body: Looked::Full(body.freeze()),
                facts,
            })
        }
        _ => {
            let facts = BodyFacts {
                model: tracker.model.clone(),
                provider: tracker.provider.clone(),
                usage: tracker.usage.clone(),
                ..BodyFacts::default()
            };
            Ok(Answer {
                parts,
                body: Looked::Committed(held, rb, Box::new(tracker)),
                facts,
            })
        }
    }
}

/// The caller's body for `route`: its model, its `provider` and `models`
/// when it sets them (replacing the caller's or inserted first), and without
/// the OpenRouter-only keys when its endpoint is not OpenRouter. Everything
/// else is the caller's bytes, shared, not copied.
pub(crate) fn attempt_body(body: &Bytes, index: &RequestIndex, route: &Route) -> Result<ReplayBody, BadEdits> {
    let mut edits = Edits::default();
    let mut insert = BytesMut::new();
    for (key, ours, theirs) in [
        ("provider", route.provider_json(), index.provider),
        ("models", route.fallbacks_json(), index.models),
    ] {
        match (ours, theirs) {
            (Some(json), Some(span)) => edits.push(span.value_start..span.value_end, json.clone())?,
            (Some(json), None) => {
                insert.extend_from_slice(b"\"");
                insert.extend_from_slice(key.as_bytes());
                insert.extend_from_slice(b"\":");
                insert.extend_from_slice(json);
                insert.extend_from_slice(b",");
            }
            (None, _) => {}
        }
    }
    if !insert.is_empty() {
        let at = index.object_start + 1;
        edits.push(at..at, insert.freeze())?;
    }
    if body.get(index.model.clone()) != Some(&route.model_json()[..]) {
        edits.push(index.model.clone(), route.model_json().clone())?;
    }
    if route.get_endpoint().is_some_and(|e| !e.openrouter) {
        // Other APIs refuse OpenRouter's extensions; the route's own
        // `provider`/`models` are kept (setting them says the endpoint wants them).
        let mut gone = [MemberSpan::default(); 4];
        let mut n = 0;
        for member in [
            index.provider.filter(|_| route.provider_json().is_none()),
            index.models.filter(|_| route.fallbacks_json().is_none()),
            index.route,
            index.transforms,
        ]
        .into_iter()
        .flatten()
        {
            if let Some(slot) = gone.get_mut(n) {
                *slot = member;
                n += 1;
            }
        }
        let gone = gone.get_mut(..n).unwrap_or_default();
        gone.sort_unstable_by_key(|m| m.value_start);
        for range in removals(gone) {
            edits.push(range, Bytes::new())?;
        }
    }
    edits.apply(body)
}

/// The edits of one attempt's body, kept on the stack: at most the
/// `provider` and `models` replacements, one insertion, the model and four
/// removals.
#[derive(Default)]
struct Edits {
    list: [Edit; 8],
    len: usize,
}

impl Edits {
    fn push(&mut self, range: std::ops::Range<usize>, replacement: Bytes) -> Result<(), BadEdits> {
        let Some(slot) = self.list.get_mut(self.len) else {
            // Cannot happen (the bound above is exact); refuse rather than panic.
            return Err(BadEdits {
                range,
                after: self.len,
                len: 0,
            });
        };
        *slot = Edit { range, replacement };
        self.len += 1;
        Ok(())
    }

    fn apply(mut self, body: &Bytes) -> Result<ReplayBody, BadEdits> {
        let edits = self.list.get_mut(..self.len).unwrap_or_default();
        if edits.is_empty() {
            return Ok(ReplayBody::new(body.clone()));
        }
        edits.sort_unstable_by_key(|e| (e.range.start, e.range.end));
        ReplayBody::rewrite(body, edits)
    }
}

fn attempt_request(
    parts: http::request::Parts,
    body: ReplayBody,
    attempt: Attempt,
    route: &Route,
    credential_headers: &[HeaderName],
) -> Request<ReplayBody> {
    let len = body.len();
    let mut req = Request::from_parts(parts, body);
    if let Some(endpoint) = route.get_endpoint() {
        *req.uri_mut() = endpoint.chat_uri.clone();
        let headers = req.headers_mut();
        // A key or host meant for the caller's upstream never goes elsewhere.
        headers.remove(header::HOST);
        for name in credential_headers {
            // `remove` drops only the first value of a repeated header.
            while headers.remove(name).is_some() {}
        }
        if let Some(auth) = &endpoint.authorization {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
    }
    if route.metadata() {
        req.headers_mut()
            .insert(X_OPENROUTER_METADATA, HeaderValue::from_static("enabled"));
    }
    req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    req.extensions_mut().insert(attempt);
    req
}

/// `msg: source: source`, so "client error (Connect)" says what failed.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !text.contains(&msg) {
            text.push_str(": ");
            text.push_str(&msg);
        }
        source = s.source();
    }
    crate::inspect::truncate(text)
}

/// Sets the report's headers and extension. `route` is the one that
/// served: its prebuilt header values are used when they say the same.
fn finish<B>(
    mut resp: Response<B>,
    mut report: FallbackReport,
    started: Instant,
    route: Option<&Route>,
) -> Response<B> {
    report.elapsed = started.elapsed();
    let headers = resp.headers_mut();
    let model = route.and_then(|r| Some((r.model(), r.model_header()?)));
    set_header(headers, X_FALLBACK_MODEL, report.served_model(), model);
    let label = route.and_then(|r| Some((r.get_label()?, r.label_header()?)));
    set_header(headers, X_FALLBACK_LABEL, report.served_label().unwrap_or(""), label);
    let sent = report.attempts.iter().filter(|a| a.outcome.was_sent()).count();
    let sent = crate::report::digit(sent).map_or_else(|| HeaderValue::from(sent), HeaderValue::from_static);
    headers.insert(X_FALLBACK_ATTEMPTS, sent);
    resp.extensions_mut().insert(report);
    resp
}

/// Sets `name` to `value`, or removes it when `value` is empty or not a
/// header value. `prebuilt` is some text already made a header value, used
/// when it is `value`.
fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str, prebuilt: Option<(&str, &HeaderValue)>) {
    let v = match prebuilt {
        Some((text, v)) if text == value => Some(v.clone()),
        _ => crate::route::header_value(value),
    };
    match v {
        Some(v) => {
            headers.insert(name, v);
        }
        None => {
            headers.remove(name);
        }
    }
}

fn json_response<B>(status: StatusCode, body: serde_json::Value) -> Response<ResponseBody<B>> {
    let bytes = Bytes::from(serde_json::to_vec(&body).expect("a JSON value always serializes"));
    let mut resp = Response::new(ResponseBody::full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn reject<B>(status: StatusCode, bad: &BadRequest, started: Instant) -> Response<ResponseBody<B>> {
    tracing::debug!(code = bad.code, "llm fallback rejected the request");
    let resp = json_response(
        status,
        json!({"error": {
            "message": bad.message,
            "type": "invalid_request_error",
            "param": bad.param,
            "code": bad.code,
        }}),
    );
    finish(resp, FallbackReport::rejected(Duration::ZERO), started, None)
}

/// A bug of the crate met while building an attempt: a `500` in OpenAI
/// error JSON, with nothing sent for the attempt.
fn internal_error<B>(bad: &BadEdits, started: Instant) -> Response<ResponseBody<B>> {
    tracing::error!(error = %bad, "llm fallback could not build an attempt's body (a bug; please report it)");
    let resp = json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"error": {
            "message": format!("the fallback layer could not build the request for an attempt: {bad}"),
            "type": "internal_error",
            "param": null,
            "code": "fallback_internal_error",
        }}),
    );
    finish(resp, FallbackReport::rejected(Duration::ZERO), started, None)
}

fn too_large<B>(limit: usize, started: Instant) -> Response<ResponseBody<B>> {
    reject(
        StatusCode::PAYLOAD_TOO_LARGE,
        &BadRequest {
            code: "request_too_large",
            param: None,
            message: format!("the request body is larger than the fallback layer's limit of {limit} bytes"),
        },
        started,
    )
}

/// The one answer a caller gets when no route served: `502` (or `504` when
/// the deadline ended the chain) with every attempt named, whatever the last
/// failure was.
fn exhausted<B>(mut report: FallbackReport, body: ExhaustionBody, started: Instant) -> Response<ResponseBody<B>> {
    if !report.attempts.iter().any(|a| a.outcome.was_sent()) && !report.attempts.is_empty() {
        // Nothing was sent: no route can serve this request as it is.
        let reasons: Vec<String> = report.attempts.iter().map(ToString::to_string).collect();
        let bad = BadRequest {
            code: "no_route_fits",
            param: None,
            message: format!("no route of the chain can serve this request: {}", reasons.join("; ")),
        };
        let mut resp = reject(StatusCode::BAD_REQUEST, &bad, started);
        report.resolution = Resolution::Rejected;
        report.elapsed = started.elapsed();
        resp.extensions_mut().insert(report);
        return resp;
    }
    report.elapsed = started.elapsed();
    let exhausted = Exhausted::new(report);
    tracing::warn!(error = %exhausted, "llm fallback chain exhausted");
    let attempts: Vec<_> = exhausted
        .report()
        .attempts()
        .iter()
        .map(|a| {
            let e = a.upstream_error();
            if body == ExhaustionBody::Summary {
                return json!({
                    "model": a.model(),
                    "label": a.label(),
                    "chain": a.chain(),
                    "outcome": a.outcome().as_str(),
                    "status": a.status().map(|s| s.as_u16()),
                    "error_type": a.error_type().and_then(crate::report::plain_identifier),
                    "skip_reason": a.skip_reason().map(ToString::to_string),
                    "elapsed_ms": a.elapsed().as_millis() as u64,
                });
            }
            json!({
                "model": a.model(),
                "label": a.label(),
                "chain": a.chain(),
                "outcome": a.outcome().as_str(),
                "status": a.status().map(|s| s.as_u16()),
                "error_type": a.error_type(),
                "message": e.and_then(|e| e.message()).or(a.transport_error()),
                "provider_name": e.and_then(|e| e.provider_name()),
                "raw": e.and_then(|e| e.raw()),
                "skip_reason": a.skip_reason().map(ToString::to_string),
                "elapsed_ms": a.elapsed().as_millis() as u64,
            })
        })
        .collect();
    let status = exhausted.status();
    let mut resp = json_response(
        status,
        json!({"error": {
            "message": match body {
                ExhaustionBody::Summary => exhausted.summary(),
                _ => exhausted.to_string(),
            },
            "type": "upstream_error",
            "param": null,
            "code": match exhausted.report().resolution() {
                Resolution::DeadlineExceeded => "fallback_deadline_exceeded",
                _ => "fallback_exhausted",
            },
            "metadata": {"attempts": attempts},
        }}),
    );
    if let Some(after) = exhausted.retry_after() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
    }
    let report = exhausted.report().clone();
    finish(resp, report, started, None)
}
