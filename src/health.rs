//! Route health (cooldowns with a half-open probe), the hedge budget and
//! drills.
//!
//! Health is kept per route key (the model id, plus the endpoint for routes
//! with their own) in a [`HealthStore`] shared by every clone of the layer.
//! The in-memory [`Cooldowns`] store is the default; with the `redis`
//! feature, [`RedisHealth`] shares the same rules across a fleet. Both eject
//! a route after consecutive failures, on a `Retry-After`, or (with a
//! [`Breaker`]) when its failure rate over a rolling window is too high.

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub use self::redis::{RedisHealth, RedisHealthBuilder, RedisHealthError};

use http::{HeaderMap, HeaderName};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Whether a route may be tried now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// Healthy: try it.
    Open,
    /// Its cooldown is over and this request is the one probe let through:
    /// its outcome restores the route or cools it again.
    Probe,
    /// Cooling down until `until` (or another request holds the probe): skip it.
    Cooling {
        /// When the route may be probed again.
        until: Instant,
    },
}

/// What happened to an admitted attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthEvent {
    /// The route answered well.
    Success,
    /// The route failed in a way that says it is unwell (5xx, 429, 408,
    /// timeout, transport error, error inside a 200). `retry_after` is the
    /// upstream's `Retry-After` on a 429/503.
    Failure {
        /// How long the upstream asked to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// The attempt ended without saying anything about the route (cancelled,
    /// stopped on the caller's error): a probe it held is released.
    Released,
}

/// Where route health lives. Implement it to share cooldowns across a fleet;
/// [`Cooldowns`] keeps them in memory.
///
/// `admit` and `record` are called on the request path: keep them fast and
/// never block on I/O there (a remote store should cache locally and sync in
/// the background).
pub trait HealthStore: Send + Sync + fmt::Debug + 'static {
    /// Whether the route `key` may be tried at `now`. Returning
    /// [`Admission::Probe`] hands this caller the route's one probe.
    fn admit(&self, key: &str, now: Instant) -> Admission;

    /// The outcome of an attempt on `key`.
    fn record(&self, key: &str, event: HealthEvent, now: Instant);

    /// The largest share (0.0–1.0) of a chain's routes that may be skipped
    /// as cooling in one request; cooling routes past it are tried anyway,
    /// as Envoy's `max_ejection_percent`. At least one route of a chain may
    /// always cool. The default, 1.0, sets no limit.
    fn max_open_share(&self) -> f64 {
        1.0
    }

    /// What a health endpoint shows: where health is kept and the routes
    /// cooling at `now`. The default says nothing of either.
    fn status(&self, now: Instant) -> HealthStatus {
        let _ = now;
        HealthStatus::new(StoreState::Unknown, Vec::new())
    }
}

/// A health store's state, for a health endpoint ([`HealthStore::status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthStatus {
    /// Where health is kept, and whether it is shared now.
    pub store: StoreState,
    /// The routes cooling down, with how long each has left (zero: its
    /// cooldown is over and it waits for its probe). An endpoint's user
    /// info and query are left out of the route names.
    pub cooling: Vec<(String, Duration)>,
}

impl HealthStatus {
    /// A status.
    pub fn new(store: StoreState, cooling: Vec<(String, Duration)>) -> Self {
        HealthStatus { store, cooling }
    }
}

/// Where a store keeps route health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreState {
    /// In this process only ([`Cooldowns`]).
    Memory,
    /// Shared, and the shared store answers.
    Connected,
    /// Shared, but the shared store is unreachable: local health only.
    LocalOnly,
    /// A store that does not say.
    Unknown,
}

impl StoreState {
    /// `memory`, `connected`, `local-only` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Memory => "memory",
            StoreState::Connected => "connected",
            StoreState::LocalOnly => "local-only",
            StoreState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for StoreState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A circuit breaker by failure rate: a route whose failures reach
/// `failure_ratio` of at least `min_requests` attempts over a rolling
/// `window` is ejected like one that failed `failures` times in a row (the
/// consecutive rule stays). What counts as a failure is the attempt's
/// verdict ([`HealthEvent::Failure`]), the same one the policy acted on.
///
/// ```
/// use llm_fallback::health::{Breaker, Cooldowns};
/// use std::time::Duration;
///
/// // Half the attempts of the last 30 s failed, out of at least 20: eject.
/// let store = Cooldowns::new()
///     .breaker(Breaker::new().window(Duration::from_secs(30)).min_requests(20).failure_ratio(0.5))
///     .max_open_share(0.5);
/// # let _ = store;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Breaker {
    /// The rolling window attempts are counted over.
    pub window: Duration,
    /// Attempts in the window before the breaker may open.
    pub min_requests: u32,
    /// Share of failed attempts (0.0–1.0) that opens it.
    pub failure_ratio: f64,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

impl Breaker {
    /// Opens at 50 % failures of at least 20 attempts over 60 s.
    pub fn new() -> Self {
        Breaker {
            window: Duration::from_secs(60),
            min_requests: 20,
            failure_ratio: 0.5,
        }
    }

    /// The rolling window (at least 1 ms).
    pub fn window(mut self, d: Duration) -> Self {
        self.window = d.max(Duration::from_millis(1));
        self
    }

    /// Attempts in the window before the breaker may open (at least 1).
    pub fn min_requests(mut self, n: u32) -> Self {
        self.min_requests = n.max(1);
        self
    }

    /// The failure share that opens it (clamped to 0.0–1.0; NaN is 1.0).
    pub fn failure_ratio(mut self, r: f64) -> Self {
        self.failure_ratio = if r.is_nan() { 1.0 } else { r.clamp(0.0, 1.0) };
        self
    }

    /// Whether `failures` of `requests` (weighted counts) open the breaker.
    fn trips(&self, requests: f64, failures: f64) -> bool {
        requests >= f64::from(self.min_requests) && requests > 0.0 && failures / requests >= self.failure_ratio
    }
}

/// Attempts over a sliding window: this window's counts plus the previous
/// one's, weighted by how much of it still overlaps (as [`HedgeBudget`]).
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    started: Option<Instant>,
    ok: u32,
    failed: u32,
    previous: (u32, u32),
}

impl Tally {
    /// Slides the window to `now`; returns the weight of the previous one.
    fn slide(&mut self, window: Duration, now: Instant) -> f64 {
        let started = *self.started.get_or_insert(now);
        let age = now.saturating_duration_since(started);
        if age >= window.saturating_mul(2) {
            *self = Tally {
                started: Some(now),
                ..Tally::default()
            };
        } else if age >= window {
            self.previous = (self.ok, self.failed);
            (self.ok, self.failed) = (0, 0);
            self.started = Some(started.checked_add(window).unwrap_or(now));
        }
        let into = self.started.map_or(0.0, |s| {
            now.saturating_duration_since(s).as_secs_f64() / window.as_secs_f64()
        });
        1.0 - into.min(1.0)
    }

    /// Counts an attempt; returns the (requests, failures) in the window.
    fn add(&mut self, window: Duration, now: Instant, failed: bool) -> (f64, f64) {
        let weight = self.slide(window, now);
        if failed {
            self.failed = self.failed.saturating_add(1);
        } else {
            self.ok = self.ok.saturating_add(1);
        }
        let (pok, pfail) = self.previous;
        let failures = f64::from(self.failed) + f64::from(pfail) * weight;
        (f64::from(self.ok) + f64::from(pok) * weight + failures, failures)
    }
}

/// In-memory cooldowns: after `failures` consecutive failures — or at once
/// on a 429/503 with `Retry-After` — a route cools down for the
/// `Retry-After`, else for `base` doubled at each repeated ejection up to
/// `max`. Then one probe request is let through; its success restores the
/// route, its failure cools it again for longer. With a [`Breaker`], a high
/// failure rate ejects a route the same way; with
/// [`max_open_share`](Cooldowns::max_open_share), no request skips more than
/// that share of its chain as cooling.
///
/// ```
/// use llm_fallback::health::Cooldowns;
/// use llm_fallback::{Chain, FallbackLayer, Route};
/// use std::time::Duration;
///
/// let layer = FallbackLayer::builder(Chain::new([Route::new("a/primary"), Route::new("b/secondary")]))
///     .cooldowns(Cooldowns::new().failures(3).base(Duration::from_secs(5)).max(Duration::from_secs(300)))
///     .layer();
/// # let _ = layer;
/// ```
#[derive(Debug)]
pub struct Cooldowns {
    failures: u32,
    base: Duration,
    max: Duration,
    max_retry_after: Duration,
    breaker: Option<Breaker>,
    max_open_share: f64,
    routes: Mutex<HashMap<String, RouteHealth>>,
}

#[derive(Debug, Default)]
struct RouteHealth {
    consecutive: u32,
    ejections: u32,
    until: Option<Instant>,
    probing: bool,
    tally: Tally,
}

/// What a [`Cooldowns::apply`] changed, for a store that passes it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing worth telling anyone.
    None,
    /// A failure counted that did not eject the route.
    Failed,
    /// A success counted on a route that was not cooling.
    Succeeded,
    /// The route was ejected for `cool` (its `ejections`-th time in a row).
    Cooled { cool: Duration, ejections: u32 },
    /// The route's probe succeeded: it is healthy again.
    Restored,
    /// The route's probe ended without a verdict.
    ProbeReleased,
}

impl Default for Cooldowns {
    fn default() -> Self {
        Self::new()
    }
}

impl Cooldowns {
    /// Three failures in a row eject a route for 5 s, doubling per repeated
    /// ejection up to 5 min; `Retry-After` is honoured up to 10 min.
    pub fn new() -> Self {
        Cooldowns {
            failures: 3,
            base: Duration::from_secs(5),
            max: Duration::from_secs(300),
            max_retry_after: Duration::from_secs(600),
            breaker: None,
            max_open_share: 1.0,
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// Also ejects a route by failure rate (see [`Breaker`]); off by default.
    pub fn breaker(mut self, breaker: Breaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// The largest share of a chain's routes a request skips as cooling
    /// (see [`HealthStore::max_open_share`]); default 1.0 (no limit).
    pub fn max_open_share(mut self, share: f64) -> Self {
        self.max_open_share = if share.is_nan() { 1.0 } else { share.clamp(0.0, 1.0) };
        self
    }

    /// The breaker, if one is set.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn breaker_config(&self) -> Option<Breaker> {
        self.breaker
    }

    /// Consecutive failures that eject a route (at least 1).
    pub fn failures(mut self, n: u32) -> Self {
        self.failures = n.max(1);
        self
    }

    /// First cooldown when no `Retry-After` was given.
    pub fn base(mut self, d: Duration) -> Self {
        self.base = d;
        self
    }

    /// Longest cooldown from repeated ejections.
    pub fn max(mut self, d: Duration) -> Self {
        self.max = d;
        self
    }

    /// Longest `Retry-After` honoured.
    pub fn max_retry_after(mut self, d: Duration) -> Self {
        self.max_retry_after = d;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RouteHealth>> {
        // A panic while holding the lock cannot leave a half-updated entry
        // (each update is a few plain assignments), so poison is ignored.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Cooldowns {
    /// The admission of `key` at `now`; `may_probe` says whether this store
    /// may hand out the route's probe (a fleet store may not until it holds
    /// the fleet's probe lock).
    pub(crate) fn admit_with(&self, key: &str, now: Instant, may_probe: impl FnOnce() -> bool) -> Admission {
        let mut routes = self.lock();
        let Some(h) = routes.get_mut(key) else {
            return Admission::Open;
        };
        match h.until {
            None => Admission::Open,
            Some(until) if now < until || h.probing => Admission::Cooling { until },
            Some(until) => {
                if !may_probe() {
                    return Admission::Cooling { until };
                }
                h.probing = true;
                Admission::Probe
            }
        }
    }

    /// Records `event` on `key` and says what changed.
    pub(crate) fn apply(&self, key: &str, event: HealthEvent, now: Instant) -> Change {
        let mut routes = self.lock();
        match event {
            HealthEvent::Success => {
                let Some(h) = routes.get_mut(key) else {
                    if let (Some(b), Some(h)) = (self.breaker, slot(&mut routes, key, now)) {
                        h.tally.add(b.window, now, false);
                    }
                    return Change::Succeeded;
                };
                if std::mem::take(&mut h.probing) && h.until.is_some() {
                    // Healthy again: the window that ejected it starts over.
                    *h = RouteHealth::default();
                    return Change::Restored;
                }
                // Only the probe ends a cooldown: an attempt sent before it
                // (or past the open share) does not cut a `Retry-After` short.
                if h.until.is_none() {
                    h.ejections = 0;
                }
                if let Some(b) = self.breaker {
                    h.tally.add(b.window, now, false);
                }
                Change::Succeeded
            }
            HealthEvent::Released => match routes.get_mut(key) {
                Some(h) if h.probing => {
                    h.probing = false;
                    Change::ProbeReleased
                }
                _ => Change::None,
            },
            HealthEvent::Failure { retry_after } => {
                let Some(h) = slot(&mut routes, key, now) else {
                    return Change::None;
                };
                h.consecutive = h.consecutive.saturating_add(1);
                let rate = self.breaker.is_some_and(|b| {
                    let (requests, failures) = h.tally.add(b.window, now, true);
                    b.trips(requests, failures)
                });
                let was_probe = std::mem::take(&mut h.probing);
                // A failure of an attempt sent while the route already cools
                // (forced, or past the open share) does not eject it again.
                let cooling = h.until.is_some_and(|u| now < u);
                if was_probe || retry_after.is_some() || (!cooling && (rate || h.consecutive >= self.failures)) {
                    let cool = self.eject(key, h, retry_after, now);
                    return Change::Cooled {
                        cool,
                        ejections: h.ejections,
                    };
                }
                Change::Failed
            }
        }
    }

    /// Ejects a route a fleet's shared counts condemn (`consecutive`
    /// failures in a row, `requests`/`failures` in the breaker's window)
    /// unless it already cools. Returns the cooldown it set.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn fleet_counts(
        &self,
        key: &str,
        consecutive: u64,
        requests: u64,
        failures: u64,
        now: Instant,
    ) -> Option<(Duration, u32)> {
        let rate = self.breaker.is_some_and(|b| b.trips(requests as f64, failures as f64));
        if !rate && consecutive < u64::from(self.failures) {
            return None;
        }
        let mut routes = self.lock();
        let h = slot(&mut routes, key, now)?;
        if h.until.is_some() {
            return None;
        }
        let cool = self.eject(key, h, None, now);
        Some((cool, h.ejections))
    }

    /// Adopts a cooldown learned elsewhere, ending at `until`: a cooldown
    /// is only ever extended. Returns whether it changed anything.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn adopt(&self, key: &str, until: Instant, ejections: u32) -> bool {
        let mut routes = self.lock();
        let Some(h) = slot(&mut routes, key, Instant::now()) else {
            return false;
        };
        h.ejections = h.ejections.max(ejections);
        h.consecutive = 0;
        if h.until.is_some_and(|u| u >= until) {
            return false;
        }
        h.until = Some(until);
        true
    }

    /// Ends a cooldown another replica's probe ended (not one this store
    /// is probing itself).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn restore(&self, key: &str) {
        let mut routes = self.lock();
        if let Some(h) = routes.get_mut(key) {
            if h.until.is_some() && !h.probing {
                *h = RouteHealth::default();
            }
        }
    }

    /// The routes cooling at `now`, with how long they have left (a route
    /// whose cooldown ended but has not been probed yet shows zero). An
    /// endpoint's user info and query are left out of the names.
    pub fn cooling(&self, now: Instant) -> Vec<(String, Duration)> {
        let routes = self.lock();
        let mut out: Vec<_> = routes
            .iter()
            .filter_map(|(k, h)| {
                Some((
                    crate::redact::urls(k).into_owned(),
                    h.until?.saturating_duration_since(now),
                ))
            })
            .collect();
        out.sort();
        out
    }

    fn eject(&self, key: &str, h: &mut RouteHealth, retry_after: Option<Duration>, now: Instant) -> Duration {
        h.ejections = h.ejections.saturating_add(1);
        let backoff = self
            .base
            .saturating_mul(1u32 << (h.ejections - 1).min(16))
            .min(self.max);
        let cool = retry_after.map_or(backoff, |r| r.min(self.max_retry_after));
        let until = now.checked_add(cool).unwrap_or_else(|| far_future(now));
        // Only ever extended: a 5 s Retry-After does not end a 60 s one.
        h.until = Some(h.until.map_or(until, |u| u.max(until)));
        h.consecutive = 0;
        tracing::info!(
            route = &*crate::redact::urls(key),
            cooldown_ms = cool.as_millis() as u64,
            "llm fallback route cooling down"
        );
        cool
    }
}

/// The most routes [`Cooldowns`] remembers. Health keys come from the
/// chains, but also from what callers choose where the layer lets them
/// (a model passed through, a caller's `models` list): the map must not
/// grow with them.
const MAX_ROUTES: usize = 65_536;

/// `key`'s entry, made when missing. A full map first forgets every route
/// with nothing to remember that matters (not cooling, not probing: a
/// failure count or a breaker window); `None` when it is still full, and
/// the event is not recorded.
fn slot<'m>(routes: &'m mut HashMap<String, RouteHealth>, key: &str, now: Instant) -> Option<&'m mut RouteHealth> {
    if routes.len() >= MAX_ROUTES && !routes.contains_key(key) {
        routes.retain(|_, h| h.probing || h.until.is_some_and(|u| now < u));
        if routes.len() >= MAX_ROUTES {
            return None;
        }
    }
    Some(routes.entry(key.to_owned()).or_default())
}

impl HealthStore for Cooldowns {
    fn admit(&self, key: &str, now: Instant) -> Admission {
        self.admit_with(key, now, || true)
    }

    fn record(&self, key: &str, event: HealthEvent, now: Instant) {
        self.apply(key, event, now);
    }

    fn max_open_share(&self) -> f64 {
        self.max_open_share
    }

    fn status(&self, now: Instant) -> HealthStatus {
        HealthStatus::new(StoreState::Memory, self.cooling(now))
    }
}

/// Hedging: when an attempt has no answer after a route's (or the chain's)
/// `hedge_after`, the next route starts beside it and the first acceptable
/// answer wins. The budget keeps hedges to at most `ratio` of the requests
/// seen in a sliding `window`, so a brownout does not double the load.
///
/// ```
/// use llm_fallback::health::HedgeBudget;
/// use llm_fallback::{Chain, FallbackLayer, Route};
/// use std::time::Duration;
///
/// let chain = Chain::new([Route::new("a/slow").hedge_after(Duration::from_millis(200)), Route::new("b/fast")]);
/// let layer = FallbackLayer::builder(chain)
///     .hedging(HedgeBudget::new(0.1, Duration::from_secs(10)))
///     .layer();
/// # let _ = layer;
/// ```
#[derive(Debug)]
pub struct HedgeBudget {
    ratio: f64,
    window: Duration,
    counts: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Option<Instant>,
    requests: u64,
    hedges: u64,
    /// The previous window's counts, weighted in as it slides out.
    previous: (u64, u64),
}

impl HedgeBudget {
    /// At most `ratio` (0.0–1.0) extra requests over any `window`; at least
    /// one hedge is always allowed in a window.
    pub fn new(ratio: f64, window: Duration) -> Self {
        HedgeBudget {
            ratio: ratio.clamp(0.0, 1.0),
            window: window.max(Duration::from_millis(1)),
            counts: Mutex::new(Window {
                started: None,
                requests: 0,
                hedges: 0,
                previous: (0, 0),
            }),
        }
    }

    fn with_window<T>(&self, f: impl FnOnce(&mut Window, f64) -> T) -> T {
        let now = Instant::now();
        let mut w = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let started = *w.started.get_or_insert(now);
        let age = now.saturating_duration_since(started);
        if age >= self.window.saturating_mul(2) {
            *w = Window {
                started: Some(now),
                requests: 0,
                hedges: 0,
                previous: (0, 0),
            };
        } else if age >= self.window {
            w.previous = (w.requests, w.hedges);
            w.requests = 0;
            w.hedges = 0;
            w.started = Some(started.checked_add(self.window).unwrap_or(now));
        }
        let slid = w.started.map_or(0.0, |s| {
            now.saturating_duration_since(s).as_secs_f64() / self.window.as_secs_f64()
        });
        f(&mut w, 1.0 - slid.min(1.0))
    }

    /// Counts a request.
    pub(crate) fn request(&self) {
        self.with_window(|w, _| w.requests += 1);
    }

    /// A hedge now would stay within the budget.
    pub(crate) fn admits_more(&self) -> bool {
        self.with_window(|w, weight| {
            let requests = w.requests as f64 + w.previous.0 as f64 * weight;
            let hedges = w.hedges as f64 + w.previous.1 as f64 * weight;
            hedges + 1.0 <= (requests * self.ratio).max(1.0)
        })
    }

    /// Counts a hedge.
    pub(crate) fn spend(&self) {
        self.with_window(|w, _| w.hedges += 1);
    }
}

/// Drills: on purpose, skip the primary of some requests as if it had
/// failed, so the rest of the chain is exercised in production. Reports and
/// metrics mark those requests as drills.
///
/// ```
/// use llm_fallback::health::Drills;
/// use llm_fallback::{Chain, FallbackLayer, Route};
///
/// // One request in a hundred, plus any request with `x-fallback-drill: 1`.
/// let layer = FallbackLayer::builder(Chain::new([Route::new("a/primary"), Route::new("b/secondary")]))
///     .drills(Drills::fraction(0.01).allow_header(true))
///     .layer();
/// # let _ = layer;
/// ```
#[derive(Debug)]
pub struct Drills {
    fraction: f64,
    allow_header: bool,
    seen: AtomicU64,
}

pub(crate) type DrillConfig = Drills;

/// Request header asking for a drill (honoured only with
/// [`Drills::allow_header`]); always removed before forwarding.
pub(crate) const X_FALLBACK_DRILL: HeaderName = HeaderName::from_static("x-fallback-drill");

impl Drills {
    /// Drill exactly `fraction` (0.0–1.0) of requests, spread evenly.
    pub fn fraction(fraction: f64) -> Self {
        Drills {
            fraction: fraction.clamp(0.0, 1.0),
            allow_header: false,
            seen: AtomicU64::new(0),
        }
    }

    /// Also drill requests carrying an `x-fallback-drill` header (other than
    /// `0`/`false`). Off by default, so callers cannot trigger drills unless
    /// the operator allows it.
    pub fn allow_header(mut self, yes: bool) -> Self {
        self.allow_header = yes;
        self
    }

    /// Whether this request is a drill; removes the drill header either way.
    pub(crate) fn pick(&self, headers: &mut HeaderMap) -> bool {
        let asked = headers
            .remove(X_FALLBACK_DRILL)
            .is_some_and(|v| !matches!(v.to_str().map(str::trim), Ok("0" | "false" | "")));
        if asked && self.allow_header {
            return true;
        }
        // Request n is a drill when floor((n+1)·f) > floor(n·f): exactly
        // `fraction` of requests, evenly spread, no randomness to test around.
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.fraction).floor() > (n * self.fraction).floor()
    }
}

/// About thirty years from `now`: "never" for a cooldown whose length
/// does not fit an `Instant` (tokio's `sleep` does the same).
fn far_future(now: Instant) -> Instant {
    const THIRTY_YEARS: Duration = Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(THIRTY_YEARS).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_routes_remembered_stay_bounded_whatever_the_keys() {
        // One failure each on more keys than the map holds (a caller who
        // picks model names): the map stays bounded, cooling routes stay.
        let fail = HealthEvent::Failure { retry_after: None };
        let t0 = Instant::now();
        let c = Cooldowns::new().failures(3);
        for i in 0..MAX_ROUTES + 1000 {
            c.record(&format!("caller-model-{i}"), fail, t0);
        }
        assert!(c.lock().len() <= MAX_ROUTES);
        let c = Cooldowns::new().failures(1).base(Duration::from_secs(60));
        for i in 0..MAX_ROUTES + 1000 {
            c.record(&format!("caller-model-{i}"), fail, t0);
        }
        // Full of cooling routes: new keys are not recorded, old ones stay.
        assert_eq!(c.lock().len(), MAX_ROUTES);
        assert!(matches!(c.admit("caller-model-0", t0), Admission::Cooling { .. }));
        assert_eq!(
            c.admit(&format!("caller-model-{}", MAX_ROUTES + 1), t0),
            Admission::Open
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cooldown_probe_and_recovery() {
        let c = Cooldowns::new().failures(2).base(Duration::from_secs(10));
        let fail = HealthEvent::Failure { retry_after: None };
        let t0 = Instant::now();
        c.record("m", fail, t0);
        assert_eq!(c.admit("m", t0), Admission::Open, "one failure is not enough");
        c.record("m", fail, t0);
        assert_eq!(
            c.admit("m", t0),
            Admission::Cooling {
                until: t0 + Duration::from_secs(10)
            }
        );
        let later = t0 + Duration::from_secs(10);
        assert_eq!(c.admit("m", later), Admission::Probe);
        assert!(
            matches!(c.admit("m", later), Admission::Cooling { .. }),
            "one probe at a time"
        );
        // The probe fails: cooled again, twice as long.
        c.record("m", fail, later);
        assert_eq!(
            c.admit("m", later),
            Admission::Cooling {
                until: later + Duration::from_secs(20)
            }
        );
        let later = later + Duration::from_secs(20);
        assert_eq!(c.admit("m", later), Admission::Probe);
        c.record("m", HealthEvent::Success, later);
        assert_eq!(c.admit("m", later), Admission::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_cools_at_once_and_a_released_probe_is_free_again() {
        let c = Cooldowns::new();
        let t0 = Instant::now();
        c.record(
            "m",
            HealthEvent::Failure {
                retry_after: Some(Duration::from_secs(42)),
            },
            t0,
        );
        assert_eq!(
            c.admit("m", t0),
            Admission::Cooling {
                until: t0 + Duration::from_secs(42)
            }
        );
        let t1 = t0 + Duration::from_secs(42);
        assert_eq!(c.admit("m", t1), Admission::Probe);
        c.record("m", HealthEvent::Released, t1);
        assert_eq!(
            c.admit("m", t1),
            Admission::Probe,
            "a cancelled probe does not block the route"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_at_its_ratio_after_the_minimum_requests() {
        let fail = HealthEvent::Failure { retry_after: None };
        let breaker = Breaker::new()
            .window(Duration::from_secs(10))
            .min_requests(10)
            .failure_ratio(0.5);
        // Consecutive ejection out of the way: only the rate can open it.
        let c = Cooldowns::new()
            .failures(100)
            .base(Duration::from_secs(7))
            .breaker(breaker);
        let t0 = Instant::now();
        // Alternating outcomes: 50 % failures, but under the minimum.
        for i in 0..9 {
            let event = if i % 2 == 0 { fail } else { HealthEvent::Success };
            c.record("m", event, t0);
            assert_eq!(c.admit("m", t0), Admission::Open, "attempt {i}: below the minimum");
        }
        // The tenth attempt: 5 failures of 10 reach the ratio.
        assert_eq!(
            c.apply("m", fail, t0),
            Change::Cooled {
                cool: Duration::from_secs(7),
                ejections: 1
            }
        );
        assert_eq!(
            c.admit("m", t0),
            Admission::Cooling {
                until: t0 + Duration::from_secs(7)
            }
        );

        // Just under the ratio: 4 failures of 10 stay open.
        let c = Cooldowns::new().failures(100).breaker(breaker);
        for i in 0..10 {
            let event = if i % 5 < 2 { fail } else { HealthEvent::Success };
            c.record("m", event, t0);
        }
        assert_eq!(c.admit("m", t0), Admission::Open, "40 % is under 50 %");

        // The window rolls: old failures weigh less, then nothing.
        let c = Cooldowns::new().failures(100).breaker(breaker);
        for _ in 0..9 {
            c.record("m", fail, t0);
        }
        let later = t0 + Duration::from_secs(25);
        c.record("m", fail, later);
        assert_eq!(
            c.admit("m", later),
            Admission::Open,
            "the nine failures slid out of the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_ejection_stays_beside_the_breaker() {
        let fail = HealthEvent::Failure { retry_after: None };
        let c = Cooldowns::new().failures(3).breaker(Breaker::new().min_requests(1000));
        let t0 = Instant::now();
        for _ in 0..2 {
            c.record("m", fail, t0);
        }
        assert_eq!(c.admit("m", t0), Admission::Open);
        c.record("m", fail, t0);
        assert!(matches!(c.admit("m", t0), Admission::Cooling { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cooldown_is_only_extended_and_only_the_probe_ends_it() {
        let c = Cooldowns::new();
        let t0 = Instant::now();
        let retry = |s| HealthEvent::Failure {
            retry_after: Some(Duration::from_secs(s)),
        };
        c.record("m", retry(60), t0);
        c.record("m", retry(5), t0 + Duration::from_secs(1));
        let sixty = Admission::Cooling {
            until: t0 + Duration::from_secs(60),
        };
        assert_eq!(
            c.admit("m", t0 + Duration::from_secs(6)),
            sixty,
            "the 5 s one does not shorten it"
        );
        // A success of an attempt sent before the cooldown does not end it.
        c.record("m", HealthEvent::Success, t0 + Duration::from_secs(7));
        assert_eq!(c.admit("m", t0 + Duration::from_secs(7)), sixty);
        assert!(
            c.adopt("m", t0 + Duration::from_secs(90), 1),
            "a longer cooldown from elsewhere is adopted"
        );
        assert!(!c.adopt("m", t0 + Duration::from_secs(30), 1), "a shorter one is not");
        assert_eq!(c.cooling(t0), [("m".to_owned(), Duration::from_secs(90))]);
        let t1 = t0 + Duration::from_secs(90);
        assert_eq!(c.admit("m", t1), Admission::Probe);
        assert_eq!(c.apply("m", HealthEvent::Success, t1), Change::Restored);
        assert_eq!(c.admit("m", t1), Admission::Open);
        assert!(c.cooling(t1).is_empty());
    }

    #[test]
    fn the_open_share_is_clamped_and_the_default_sets_no_limit() {
        assert_eq!(HealthStore::max_open_share(&Cooldowns::new()), 1.0);
        assert_eq!(HealthStore::max_open_share(&Cooldowns::new().max_open_share(1.5)), 1.0);
        assert_eq!(
            HealthStore::max_open_share(&Cooldowns::new().max_open_share(f64::NAN)),
            1.0
        );
        assert_eq!(HealthStore::max_open_share(&Cooldowns::new().max_open_share(0.3)), 0.3);
    }

    #[test]
    fn drills_hit_an_exact_fraction_and_the_header_only_when_allowed() {
        let d = Drills::fraction(0.25);
        let picks = (0..100).filter(|_| d.pick(&mut HeaderMap::new())).count();
        assert_eq!(picks, 25);
        let mut h = HeaderMap::new();
        h.insert(X_FALLBACK_DRILL, "1".parse().unwrap());
        let d = Drills::fraction(0.0);
        assert!(!d.pick(&mut h.clone()));
        assert!(Drills::fraction(0.0).allow_header(true).pick(&mut h));
        assert!(h.get(X_FALLBACK_DRILL).is_none(), "the header is never forwarded");
    }

    #[tokio::test(start_paused = true)]
    async fn the_hedge_budget_caps_extra_requests() {
        let b = HedgeBudget::new(0.1, Duration::from_secs(10));
        for _ in 0..50 {
            b.request();
        }
        let mut hedges = 0;
        while b.admits_more() {
            b.spend();
            hedges += 1;
        }
        assert_eq!(hedges, 5);
        tokio::time::advance(Duration::from_secs(25)).await;
        assert!(b.admits_more(), "a new window has room again");
    }
}
