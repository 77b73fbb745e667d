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
//! - [`trip`]: the request's state between attempts, with its two steps:
//!   *board* (ask the plan, build and time the next attempt, arm the hedge)
//!   and *settle* (apply an attempt's verdict; serve, end or go on);
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
mod trip;
mod verdict;

use self::answer::internal_error;
pub(crate) use self::attempt::attempt_body;
use self::flights::{Flights, Landed};
use self::prepare::{buffer, prepare};
use self::trip::{Board, Settled};
use crate::body::ResponseBody;
use crate::health::{DrillConfig, HealthStore, HedgeBudget};
use crate::json::ReplayBody;
use crate::policy::Policy;
use crate::report::{ExhaustionBody, FallbackReport};
use crate::stream::{ReportHook, StreamReport};
use crate::{BoxError, ChainSet};
use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body::Body;
use std::future::Future;
use std::sync::Arc;
use tokio::time::Instant;
use tower::Service;
use tracing::field::Empty;

/// Response header naming the model that served.
pub(crate) const X_FALLBACK_MODEL: HeaderName = HeaderName::from_static("x-fallback-model");
/// Response header counting the attempts made.
pub(crate) const X_FALLBACK_ATTEMPTS: HeaderName = HeaderName::from_static("x-fallback-attempts");
/// Response header carrying the serving route's label.
pub(crate) const X_FALLBACK_LABEL: HeaderName = HeaderName::from_static("x-fallback-label");
/// Response header naming the serving route's deployment, when it has deployments.
pub(crate) const X_FALLBACK_DEPLOYMENT: HeaderName = HeaderName::from_static("x-fallback-deployment");

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
    /// Called once per request with the final report (`on_report`).
    pub(crate) on_report: Option<ReportHook>,
    /// Sticky sessions, when on.
    pub(crate) affinity: Option<crate::affinity::Affinity>,
    /// Each attempt's request carries its [`Attempt`](crate::Attempt) in
    /// its extensions, for the services inside the layer. Off only where
    /// nothing can read it (the async-openai adapter sending with its own
    /// client): inserting it costs an allocation per attempt.
    pub(crate) attempt_extension: bool,
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
            on_report: None,
            affinity: None,
            attempt_extension: true,
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
            on_report: self.on_report.clone(),
            affinity: self.affinity.clone(),
            attempt_extension: self.attempt_extension,
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
        let buffered = match buffer(&shared, req, started).await {
            Ok(buffered) => buffered,
            Err(refused) => return refused,
        };
        // What the trip borrows (the request's index, a chain made for
        // this request) lives here, beside the trip.
        let (mut index, mut own, mut slot) = (None, None, None);
        let trip = match prepare(&shared, buffered, started, svc, &mut index, &mut own, &mut slot) {
            Ok(trip) => trip,
            Err(refused) => return refused,
        };
        let mut flights = Flights::new();
        loop {
            // Launch the next route when nothing is in flight, or when the
            // hedge timer of the ones in flight fired before they committed.
            let hedge_now = flights.hedge_due();
            if flights.is_empty() || hedge_now {
                flights.disarm_hedge();
                match trip.board(flights.len()) {
                    Board::Flying(flight, hedge_at) => {
                        flights.push(flight);
                        if let Some(at) = hedge_at {
                            flights.arm_hedge_at(at);
                        }
                        if hedge_now && flights.len() > 1 {
                            trip.spend_hedge();
                        }
                    }
                    Board::Nothing | Board::DeadlinePassed if flights.is_empty() => break,
                    Board::Nothing | Board::DeadlinePassed => {}
                    // A bug of the crate, answered without sending anything
                    // rather than with a panic or a mangled body.
                    Board::Broken(bad) => return internal_error(trip.dialect(), &bad, started),
                }
            }
            // Wait for the first attempt to finish, or for the hedge timer.
            let Landed::Attempt(flight) = flights.land().await else {
                // The hedge timer fired: launch beside the one in flight.
                continue;
            };
            match trip.settle(flight, &mut flights) {
                Settled::Won(winner) => return trip.serve(winner),
                Settled::Ended => break,
                Settled::Onward => {}
            }
        }
        trip.exhausted()
    };
    // Entered around each poll of `work` where it lies, rather than by
    // `Instrumented`, which would move the large future into itself first.
    let mut work = std::pin::pin!(work);
    let entered = trip::quiet(&span);
    let resp = std::future::poll_fn(|cx| {
        let _in_span = entered.enter();
        work.as_mut().poll(cx)
    })
    .await;
    // The span is asked first: the lookup costs a hash of the type.
    let recorded = match span.is_disabled() {
        true => None,
        false => resp.extensions().get::<FallbackReport>(),
    };
    if let Some(report) = recorded {
        span.record("fallback.attempts", report.attempts.len());
        span.record("fallback.resolution", report.resolution.as_str());
        if !report.served_model().is_empty() {
            span.record("gen_ai.response.model", report.served_model());
        }
    }
    if let Some(hook) = &shared.on_report {
        // A stream's report is final when its body ends.
        match resp.extensions().get::<StreamReport>() {
            Some(stream) => stream.on_end(hook.clone()),
            None => {
                if let Some(report) = resp.extensions().get::<FallbackReport>() {
                    hook(report);
                }
            }
        }
    }
    resp
}
