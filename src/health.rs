//! Route health (cooldowns with a half-open probe), the hedge budget and
//! drills.
//!
//! Health is kept per route key (the model id, plus the endpoint for routes
//! with their own) in a [`HealthStore`] shared by every clone of the layer.
//! The in-memory [`Cooldowns`] store is the default; the trait is small so a
//! fleet can share cooldowns through an external store.

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
}

/// In-memory cooldowns: after `failures` consecutive failures — or at once
/// on a 429/503 with `Retry-After` — a route cools down for the
/// `Retry-After`, else for `base` doubled at each repeated ejection up to
/// `max`. Then one probe request is let through; its success restores the
/// route, its failure cools it again for longer.
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
    routes: Mutex<HashMap<String, RouteHealth>>,
}

#[derive(Debug, Default)]
struct RouteHealth {
    consecutive: u32,
    ejections: u32,
    until: Option<Instant>,
    probing: bool,
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
            routes: Mutex::new(HashMap::new()),
        }
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

impl HealthStore for Cooldowns {
    fn admit(&self, key: &str, now: Instant) -> Admission {
        let mut routes = self.lock();
        let Some(h) = routes.get_mut(key) else {
            return Admission::Open;
        };
        match h.until {
            None => Admission::Open,
            Some(until) if now < until || h.probing => Admission::Cooling { until },
            Some(_) => {
                h.probing = true;
                Admission::Probe
            }
        }
    }

    fn record(&self, key: &str, event: HealthEvent, now: Instant) {
        let mut routes = self.lock();
        match event {
            HealthEvent::Success => {
                routes.remove(key);
            }
            HealthEvent::Released => {
                if let Some(h) = routes.get_mut(key) {
                    h.probing = false;
                }
            }
            HealthEvent::Failure { retry_after } => {
                let h = routes.entry(key.to_owned()).or_default();
                h.consecutive += 1;
                let was_probe = std::mem::take(&mut h.probing);
                if was_probe || retry_after.is_some() || h.consecutive >= self.failures {
                    h.ejections = h.ejections.saturating_add(1);
                    let backoff = self
                        .base
                        .saturating_mul(1u32 << (h.ejections - 1).min(16))
                        .min(self.max);
                    let cool = retry_after.map_or(backoff, |r| r.min(self.max_retry_after));
                    h.until = Some(now.checked_add(cool).unwrap_or_else(|| far_future(now)));
                    h.consecutive = 0;
                    tracing::info!(
                        route = key,
                        cooldown_ms = cool.as_millis() as u64,
                        "llm fallback route cooling down"
                    );
                }
            }
        }
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
