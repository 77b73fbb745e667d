//! The attempts in the air: each one's future (readiness, send, the look
//! at its answer, within its time limit), its half-open probe, and the
//! record of one dropped because another won.

use super::verdict::Learned;
use super::Shared;
use crate::body::{collect_bounded, CollectError};
use crate::dialect::Dialect;
use crate::health::{HealthEvent, HealthStore};
use crate::hop::Hop;
use crate::inspect::BodyFacts;
use crate::json::ReplayBody;
use crate::report::{AttemptRecord, Outcome};
use crate::stream::{Signal, SseTracker};
use crate::{Attempt, BoxError};
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// An upstream response after the engine looked at it.
pub(super) enum Looked<RB> {
    /// Buffered whole and inspected.
    Full(Bytes),
    /// An event stream that reached its first content: the frames read so
    /// far, the rest of the body, and what was seen.
    Committed(VecDeque<Bytes>, RB, Box<SseTracker>),
    /// Larger than `max_response_bytes`: the part read, then the rest.
    Overflow(Bytes, RB),
}

pub(super) struct Answer<RB> {
    pub(super) parts: http::response::Parts,
    pub(super) body: Looked<RB>,
    pub(super) facts: BodyFacts,
}

/// What a flight brings back: the service, and the attempt's answer or
/// error (`None`: it ran out of time). It stays in the flight's box
/// ([`Flight::landed`]) until the attempt is settled and, if it won, served.
pub(super) struct Landing<S, RB> {
    /// Taken for the next attempt when the flight is settled.
    pub(super) svc: Option<S>,
    pub(super) result: Option<Result<Answer<RB>, BoxError>>,
}

pin_project_lite::pin_project! {
    /// One attempt in flight: what the engine knows of it and its future,
    /// built once in one box ([`Flying`]) so neither is moved again (the
    /// future is ~2.4 KB) and what carries it between the engine's parts is
    /// a pointer.
    pub(super) struct Flight<'r, F: Future> {
        // The route's index in its chain, and the chain.
        pub(super) i: usize,
        pub(super) chain: &'r Arc<str>,
        // Its position among every route the request could go through
        // (counting the chains it left).
        pub(super) position: usize,
        pub(super) hop: &'r Hop,
        pub(super) attempt: Attempt,
        pub(super) span: tracing::Span,
        pub(super) started: Instant,
        pub(super) by_deadline: bool,
        // Started beside another attempt.
        pub(super) hedge: bool,
        // This attempt is its route's half-open probe.
        pub(super) probe: Option<ProbeGuard>,
        // Set once the attempt has committed (a non-streaming response head,
        // or a stream's first content), which rules out hedging it. Only
        // with hedging on: nothing else reads it.
        pub(super) head: Option<Arc<std::sync::atomic::AtomicBool>>,
        // Counts the attempt against its deployment's latency, when its
        // route balances deployments by latency.
        pub(super) load: Option<crate::deployment::InFlight>,
        // The span each poll of `fut` enters: `span`, or none when nobody
        // listens ([`quiet`](super::trip::quiet)).
        pub(super) poll_span: tracing::Span,
        // The attempt's future ([`fly`]).
        #[pin]
        pub(super) fut: F,
        // What the future brought, once it has landed: written here by
        // [`Flights::land`], read in place by the verdict and the answer.
        pub(super) landed: Option<F::Output>,
    }
}

/// A [`Flight`] in its box.
pub(super) type Flying<'r, F> = Pin<Box<Flight<'r, F>>>;

impl<'r, F: Future> Flight<'r, F> {
    /// Records how the attempt ended on its span. Recording into a span
    /// nobody listens to still costs a call per field (and a `log` check
    /// when tracing's `log` feature is on), so a disabled one is skipped.
    pub(super) fn record_span(&self, record: &AttemptRecord) {
        if self.span.is_disabled() {
            return;
        }
        self.span.record("fallback.outcome", record.outcome.as_str());
        self.span
            .record("fallback.latency_ms", record.elapsed.as_secs_f64() * 1000.0);
        if let Some(s) = record.status {
            self.span.record("http.response.status_code", s.as_u16());
        }
        if let Some(t) = record.error_type() {
            self.span.record("error.type", t);
        }
    }

    /// The record of an attempt dropped because another one won.
    pub(super) fn cancelled(flight: Flying<'r, F>) -> AttemptRecord {
        let mut record = AttemptRecord::new(flight.chain, flight.i, flight.hop, Outcome::Cancelled);
        record.hedged = flight.hedge;
        record.elapsed = flight.started.elapsed();
        crate::metrics::attempt(flight.hop, Outcome::Cancelled, record.elapsed);
        // Dropping the flight drops the attempt's future (closing its
        // connection) and releases a probe it held.
        record
    }

    /// Tells the health store how the attempt went.
    pub(super) fn settle_health<P>(&self, shared: &Shared<P>, learned: Learned) {
        let Some(health) = &shared.health else { return };
        let event = match learned {
            Learned::Success => HealthEvent::Success,
            Learned::Failure { retry_after } => HealthEvent::Failure { retry_after },
            Learned::Nothing => HealthEvent::Released,
        };
        match &self.probe {
            Some(probe) => probe.settle(event),
            None if event != HealthEvent::Released => health.record(&self.hop.health_key, event, Instant::now()),
            None => {}
        }
    }
}

/// Holds a route's half-open probe; dropping it unsettled (the attempt was
/// cancelled) releases the probe so another request can take it.
pub(super) struct ProbeGuard {
    health: Arc<dyn HealthStore>,
    key: Arc<str>,
    settled: std::sync::atomic::AtomicBool,
}

impl ProbeGuard {
    pub(super) fn new(health: Arc<dyn HealthStore>, hop: &Hop) -> Self {
        ProbeGuard {
            health,
            key: hop.health_key.clone(),
            settled: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(super) fn settle(&self, event: HealthEvent) {
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

/// One attempt: wait for readiness, send, and look at the answer, within
/// `limit`. Hands the service back for the next attempt.
pub(super) async fn fly<S, RB>(
    mut svc: S,
    poll_ready: bool,
    request: Request<ReplayBody>,
    max_response_bytes: usize,
    limit: Option<Duration>,
    head: Option<Arc<std::sync::atomic::AtomicBool>>,
    dialect: Dialect,
) -> Landing<S, RB>
where
    S: Service<Request<ReplayBody>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Unpin,
    RB::Error: Into<BoxError>,
{
    // The future is made where it is awaited (in the timeout or alone), so
    // it is not built in one place and then moved into the other.
    let call = || {
        send(
            &mut svc,
            poll_ready,
            request,
            max_response_bytes,
            head.as_deref(),
            dialect,
        )
    };
    let out = match limit {
        Some(l) => tokio::time::timeout(l, call()).await.ok(),
        None => Some(call().await),
    };
    Landing {
        svc: Some(svc),
        result: out,
    }
}

/// Sends one attempt and, unless it is an event stream, buffers its body so
/// the policy can see an error hidden in an HTTP 200.
async fn send<S, RB>(
    svc: &mut S,
    poll_ready: bool,
    request: Request<ReplayBody>,
    max_response_bytes: usize,
    head: Option<&std::sync::atomic::AtomicBool>,
    dialect: Dialect,
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
    if parts.status.is_success() && crate::policy::is_event_stream(&parts.headers) {
        // A stream commits at its first content, not at its head.
        return until_first_token(parts, rb, max_response_bytes, dialect).await;
    }
    if let Some(head) = head {
        head.store(true, std::sync::atomic::Ordering::Release);
    }
    match collect_bounded(&mut rb, max_response_bytes).await {
        Ok(bytes) => {
            let facts = dialect.inspect(&bytes);
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

/// Frames held as the upstream gave them before the commit point; later
/// small ones are copied onto the last one held. A frame's bytes may keep alive
/// the whole read buffer they were cut from (hyper's HTTP/1 frames share
/// it), so a stream of tiny frames (`:\n` keep-alives, each in its own
/// chunk) held as handles would keep far more memory than its bytes; a
/// real stream commits within a handful of frames, which stay zero-copy.
const HELD_FRAMES: usize = 64;

/// A frame this large is held as it is even past [`HELD_FRAMES`]: the
/// buffer it may keep alive is not much larger than itself.
const HELD_AS_IS: usize = 8 * 1024;

/// Appends `data` to the last held frame: in place when that frame's
/// buffer is the layer's alone (a frame joined before, or one its reader
/// let go of), else into a copy of both. Each frame is copied at most once.
#[cold]
fn join_last(held: &mut VecDeque<Bytes>, data: &Bytes) {
    let joined = match held.pop_back().map(Bytes::try_into_mut) {
        Some(Ok(mut last)) => {
            last.extend_from_slice(data);
            last
        }
        Some(Err(last)) => {
            let mut both = BytesMut::with_capacity(last.len() + data.len());
            both.extend_from_slice(&last);
            both.extend_from_slice(data);
            both
        }
        None => BytesMut::from(&data[..]),
    };
    held.push_back(joined.freeze());
}

/// Reads an event stream up to its commit point, holding what was read.
/// Keep-alives are held (and later passed on) but are not progress. An error
/// chunk or the end of the stream before the first content is an answer the
/// policy sees as an error inside an HTTP 200, like a non-streaming one.
async fn until_first_token<RB>(
    parts: http::response::Parts,
    mut rb: RB,
    max_held_bytes: usize,
    dialect: Dialect,
) -> Result<Answer<RB>, BoxError>
where
    RB: Body<Data = Bytes> + Unpin,
    RB::Error: Into<BoxError>,
{
    let mut tracker = dialect.stream_tracker();
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
                if data.is_empty() {
                    continue;
                }
                let s = tracker.feed(&data);
                held_len += data.len();
                if held.len() < HELD_FRAMES || data.len() >= HELD_AS_IS {
                    held.push_back(data);
                } else {
                    join_last(&mut held, &data);
                }
                // Holding more than the response limit would let a stream of
                // keep-alives grow without bound: commit and pass it on.
                if s != Signal::None || held_len > max_held_bytes {
                    if s == Signal::None {
                        tracker.force_commit();
                        break Signal::Commit;
                    }
                    break s;
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
                model: tracker.model.as_deref().map(Arc::from),
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
                model: tracker.model.as_deref().map(Arc::from),
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

/// Every attempt in the air for one request, and the hedge timer.
///
/// The engine's loop awaits [`Flights::land`] and nothing else, so this is
/// the only place the attempts' futures are polled.
pub(super) struct Flights<'r, F: Future> {
    /// The attempts in launch order, as a list would hold them: the first
    /// inline (a request has one in the air but when it hedges, so it
    /// allocates no list), the others after it. `more` is empty whenever
    /// `first` is.
    first: Option<Flying<'r, F>>,
    more: Vec<Flying<'r, F>>,
    /// When it fires with no attempt committed, the next route starts beside
    /// the ones in the air.
    hedge_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What [`Flights::land`] brought.
// Matched as soon as it is returned, never stored.
#[allow(clippy::large_enum_variant)]
pub(super) enum Landed<'r, F: Future> {
    /// An attempt finished (answered, failed or timed out): what it brought
    /// is in its [`Flight::landed`].
    Attempt(Flying<'r, F>),
    /// The hedge timer fired first.
    HedgeTimer,
}

impl<'r, F: Future> Flights<'r, F> {
    pub(super) fn new() -> Self {
        Flights {
            first: None,
            more: Vec::new(),
            hedge_timer: None,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub(super) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    pub(super) fn push(&mut self, flight: Flying<'r, F>) {
        match self.first {
            None => self.first = Some(flight),
            Some(_) => self.more.push(flight),
        }
    }

    /// Takes the `k`th attempt out as `Vec::swap_remove` would: the last
    /// one takes its place.
    fn swap_remove(&mut self, k: usize) -> Option<Flying<'r, F>> {
        match k.checked_sub(1) {
            None => {
                let taken = self.first.take();
                self.first = self.more.pop();
                taken
            }
            Some(j) if j < self.more.len() => Some(self.more.swap_remove(j)),
            Some(_) => None,
        }
    }

    /// The hedge timer fired and no attempt in the air has committed (a
    /// non-streaming one whose head arrived has: its body is on the way, so
    /// a hedge would only cost). A timer that fired after a commit is
    /// dropped.
    pub(super) fn hedge_due(&mut self) -> bool {
        let fired = self.hedge_timer.as_ref().is_some_and(|t| t.is_elapsed());
        if !fired {
            return false;
        }
        let committed = self.first.iter().chain(&self.more).any(|f| {
            f.head
                .as_ref()
                .is_some_and(|h| h.load(std::sync::atomic::Ordering::Acquire))
        });
        if committed {
            self.hedge_timer = None;
        }
        !committed
    }

    /// Starts the next route beside the ones in the air at `at`, unless one
    /// has answered by then.
    pub(super) fn arm_hedge_at(&mut self, at: Instant) {
        self.hedge_timer = Some(Box::pin(tokio::time::sleep_until(at)));
    }

    /// [`Flights::arm_hedge_at`] `after` from now.
    pub(super) fn arm_hedge_after(&mut self, after: Duration) {
        self.hedge_timer = Some(Box::pin(tokio::time::sleep(after)));
    }

    pub(super) fn disarm_hedge(&mut self) {
        self.hedge_timer = None;
    }

    /// Waits for the first attempt to finish, or for the hedge timer.
    ///
    /// CORRECTNESS: this future is `Pending` only after polling every
    /// attempt's future and the armed timer with the same context, and each
    /// of those that is `Pending` registered the waker (tokio's `Sleep` and
    /// timeouts, hyper's and the inner service's futures all do). With no
    /// attempt in the air and no timer armed there would be nothing to wake
    /// it, so it never waits then: the engine only lands what it launched,
    /// and an empty set answers `HedgeTimer` at once instead of hanging.
    pub(super) async fn land(&mut self) -> Landed<'r, F> {
        let (first, more, timer) = (&mut self.first, &mut self.more, &mut self.hedge_timer);
        let landed = std::future::poll_fn(|cx| {
            for (k, f) in first.iter_mut().chain(more.iter_mut()).enumerate() {
                let f = f.as_mut().project();
                let in_span = f.poll_span.enter();
                if let std::task::Poll::Ready(out) = f.fut.poll(cx) {
                    drop(in_span);
                    *f.landed = Some(out);
                    return std::task::Poll::Ready(Some(k));
                }
            }
            match timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(std::task::Poll::Ready(())) => std::task::Poll::Ready(None),
                None if first.is_none() => std::task::Poll::Ready(None),
                _ => std::task::Poll::Pending,
            }
        })
        .await;
        match landed.and_then(|k| self.swap_remove(k)) {
            Some(flight) => Landed::Attempt(flight),
            // Cannot happen with an attempt landed: the one polled is there.
            None => Landed::HedgeTimer,
        }
    }

    /// Drops every attempt still in the air (closing their connections,
    /// releasing their probes), with their records.
    pub(super) fn cancel_all(&mut self) -> impl Iterator<Item = AttemptRecord> + '_ {
        self.hedge_timer = None;
        self.first
            .take()
            .into_iter()
            .chain(self.more.drain(..))
            .map(Flight::cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Route;

    fn flight<'r>(chain: &'r Arc<str>, hop: &'r Hop, i: usize) -> Flying<'r, std::future::Ready<usize>> {
        Box::pin(Flight {
            i,
            chain,
            position: i,
            hop,
            attempt: Attempt {
                chain: chain.clone(),
                index: i,
                model: hop.model.clone(),
                label: None,
                timeout: None,
                deployment: None,
                key: None,
            },
            span: tracing::Span::none(),
            started: Instant::now(),
            by_deadline: false,
            hedge: i > 0,
            probe: None,
            head: None,
            load: None,
            poll_span: tracing::Span::none(),
            fut: std::future::ready(i),
            landed: None,
        })
    }

    /// The first flight held inline and the others in a list behave as one
    /// list would: `swap_remove` moves the last into the gap, in every order
    /// of removal and with flights pushed in between.
    #[test]
    fn the_inline_first_flight_keeps_the_order_of_a_list() {
        let chain: Arc<str> = Arc::from("default");
        let hop = Hop::new(Route::new("m"));
        for removals in [[0, 0, 0], [1, 0, 0], [2, 1, 0], [0, 1, 0], [1, 1, 0], [2, 0, 0]] {
            let mut flights = Flights::new();
            let mut list: Vec<usize> = Vec::new();
            let mut next = 0;
            for k in removals {
                // Fill up to three, as hedges would, then land the `k`th.
                while list.len() < 3 {
                    flights.push(flight(&chain, &hop, next));
                    list.push(next);
                    next += 1;
                }
                assert_eq!(flights.len(), list.len());
                let k = k.min(list.len() - 1);
                let taken = flights.swap_remove(k).map(|f| f.i);
                assert_eq!(taken, Some(list.swap_remove(k)), "{removals:?}");
                assert_eq!(ids_of(&flights), list, "{removals:?}");
            }
            while !list.is_empty() {
                assert_eq!(flights.swap_remove(0).map(|f| f.i), Some(list.swap_remove(0)));
                assert_eq!(ids_of(&flights), list);
            }
            assert!(flights.is_empty());
            assert_eq!(flights.len(), 0);
            assert!(flights.swap_remove(0).is_none() && flights.swap_remove(1).is_none());
        }
    }

    /// An attempt's answer is left in its flight's box, where the verdict and
    /// the caller's answer read it.
    #[tokio::test]
    async fn a_landed_flight_holds_what_its_future_brought() {
        let chain: Arc<str> = Arc::from("default");
        let hop = Hop::new(Route::new("m"));
        let mut flights = Flights::new();
        flights.push(flight(&chain, &hop, 0));
        flights.push(flight(&chain, &hop, 1));
        let Landed::Attempt(first) = flights.land().await else {
            panic!("the first flight is ready")
        };
        assert_eq!((first.i, first.landed), (0, Some(0)));
        // The one left took the first place.
        assert_eq!(ids_of(&flights), vec![1]);
        let Landed::Attempt(second) = flights.land().await else {
            panic!("the second flight is ready")
        };
        assert_eq!((second.i, second.landed), (1, Some(1)));
        assert!(flights.is_empty());
        // Nothing in the air and no timer: `land` answers at once.
        assert!(matches!(flights.land().await, Landed::HedgeTimer));
    }

    fn ids_of(f: &Flights<'_, std::future::Ready<usize>>) -> Vec<usize> {
        f.first.iter().chain(&f.more).map(|f| f.i).collect()
    }
}
