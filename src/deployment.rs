//! Deployments: several copies of one route's model (other endpoints, keys
//! or `provider.order`s), balanced by weight or by latency.
//!
//! A route with deployments compiles into one hop per deployment (and per
//! key of a deployment's endpoint, see
//! [`Endpoint::api_key_envs`](crate::native::Endpoint::api_key_envs)), laid
//! out one after the other in the chain. For each request the plan picks
//! which deployment goes first; the others follow in declared order, then
//! the chain moves on to the next route. Each hop keeps its own health.
//! With [sticky sessions](crate::affinity), the deployment a session is
//! pinned to goes first instead of the balanced choice.
//!
//! Least-latency choice follows `tower::balance::p2c` with
//! `tower::load::PeakEwma` (itself from Finagle): two deployments are drawn
//! at random and the one with the lower cost goes first, where the cost is
//! a peak-sensitive moving average of its latency times its attempts in
//! flight plus one. Tower's balancer is a `Service` over a set of services
//! picked in `poll_ready`; here the deployments are rewrites of one request
//! to one inner service, and the choice is an order to fall back along, so
//! the algorithm is followed rather than the types reused.
//!
//! ```
//! use llm_fallback::{Balance, Chain, Deployment, Route};
//! use llm_fallback::native::Endpoint;
//!
//! # std::env::set_var("OPENAI_KEY_A", "sk-a"); std::env::set_var("OPENAI_KEY_B", "sk-b");
//! # std::env::set_var("AZURE_KEY", "az");
//! let openai = Endpoint::new("https://api.openai.com/v1")?.api_key_envs(["OPENAI_KEY_A", "OPENAI_KEY_B"])?;
//! let azure = Endpoint::new("https://my-azure-proxy.example/v1")?.api_key_env("AZURE_KEY")?;
//! let chain = Chain::new([
//!     Route::new("gpt-4o")
//!         .deployments([
//!             Deployment::new("openai").endpoint(openai).weight(3),
//!             Deployment::new("azure").endpoint(azure).weight(1),
//!         ])
//!         .balance(Balance::Weighted), // or Balance::LeastLatency
//!     Route::new("claude-3-5-sonnet-latest"),
//! ]);
//! // One route per deployment and key: openai's two keys, azure, then the next route.
//! assert_eq!(chain.routes().len(), 4);
//! # Ok::<(), llm_fallback::native::EndpointError>(())
//! ```

use crate::native::{Endpoint, ProviderPrefs};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One deployment of a route's model: where it is sent, with which
/// `provider` preferences, and its share of the traffic.
///
/// Set on a route with [`Route::deployments`](crate::Route::deployments).
/// What a deployment leaves `None` is the route's.
///
/// ```
/// use llm_fallback::{Balance, Deployment, Route};
/// use llm_fallback::native::{Endpoint, ProviderPrefs};
///
/// let mut azure = ProviderPrefs::default();
/// azure.order = Some(vec!["Azure".into()]);
/// let route = Route::new("openai/gpt-4o")
///     .deployments([
///         Deployment::new("openrouter").weight(3),
///         Deployment::new("azure").provider(azure).weight(1),
///         Deployment::new("direct").endpoint(Endpoint::new("https://api.openai.com/v1")?).weight(0),
///     ])
///     .balance(Balance::Weighted);
/// assert_eq!(route.deployments.len(), 3);
/// # Ok::<(), llm_fallback::native::EndpointError>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Deployment {
    /// Names the deployment in reports, headers, spans and its health key.
    pub name: String,
    /// Where its attempts go ([`Route::endpoint`](crate::Route::endpoint)), else the route's.
    pub endpoint: Option<Endpoint>,
    /// Its OpenRouter `provider` object, else the route's.
    pub provider: Option<ProviderPrefs>,
    /// Its share under [`Balance::Weighted`] (default 1). A weight of 0 is a
    /// standby: never chosen first, tried when another deployment fails.
    pub weight: u32,
}

impl Deployment {
    /// A deployment named `name` with the route's endpoint and provider, weight 1.
    pub fn new(name: impl Into<String>) -> Self {
        Deployment {
            name: name.into(),
            endpoint: None,
            provider: None,
            weight: 1,
        }
    }

    /// Sends this deployment's attempts to `endpoint`.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Sets this deployment's OpenRouter `provider` object.
    pub fn provider(mut self, prefs: ProviderPrefs) -> Self {
        self.provider = Some(prefs);
        self
    }

    /// Its share of the traffic under [`Balance::Weighted`].
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
}

/// How a route's [deployments](Deployment) are chosen per request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Balance {
    /// At random, in proportion to the weights (the default).
    #[default]
    Weighted,
    /// The lower-cost of two drawn at random (power of two choices), the
    /// cost being the peak-EWMA latency (to the first token for a stream)
    /// times the attempts in flight plus one, as `tower::load::PeakEwma`
    /// measures it: a slower answer raises the estimate at once, a faster
    /// one lowers it over [`LATENCY_DECAY`]. Weights are not used.
    LeastLatency,
}

/// How fast a latency estimate forgets a peak (tower's and Linkerd's usual 10 s).
pub const LATENCY_DECAY: Duration = Duration::from_secs(10);

/// The latency a deployment is assumed to have before any answer (tower's default).
pub const DEFAULT_LATENCY: Duration = Duration::from_secs(1);

// ===== the compiled group =====

/// The deployments of one route as compiled: shared by its hops.
pub(crate) struct Group {
    balance: Balance,
    rng: AtomicU64,
    members: Box<[Member]>,
    total_weight: u64,
    /// Hops in the group.
    units: usize,
    /// The route's model and deployment names, hashed: what sticky
    /// sessions key their pins on this route by.
    identity: u64,
}

/// One deployment within its group.
pub(crate) struct Member {
    /// Its hops' offset within the group, and how many.
    start: usize,
    len: usize,
    /// The weights of the members up to and including this one.
    cumulative: u64,
    load: Ewma,
}

/// Where a hop sits in its route's deployments.
#[derive(Clone)]
pub(crate) struct Unit {
    pub(crate) group: Arc<Group>,
    pub(crate) member: usize,
    /// The hop's position within the group.
    pub(crate) offset: usize,
    pub(crate) deployment: Option<Arc<str>>,
    /// The name (environment variable) of the key, when the endpoint has several.
    pub(crate) key: Option<Arc<str>>,
}

impl std::fmt::Debug for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unit")
            .field("deployment", &self.deployment)
            .field("key", &self.key)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl Group {
    /// A group of members of `lens` hops each, with `weights`.
    #[cfg(test)]
    pub(crate) fn new(balance: Balance, seed: Option<u64>, lens_and_weights: &[(usize, u32)]) -> Self {
        Self::with_identity(balance, seed, lens_and_weights, 0)
    }

    /// [`Group::new`] for the route whose deployments hash to `identity`
    /// ([`crate::affinity::route_identity`]).
    pub(crate) fn with_identity(
        balance: Balance,
        seed: Option<u64>,
        lens_and_weights: &[(usize, u32)],
        identity: u64,
    ) -> Self {
        let mut start = 0;
        let mut cumulative = 0u64;
        let members = lens_and_weights
            .iter()
            .map(|&(len, weight)| {
                cumulative += u64::from(weight);
                let m = Member {
                    start,
                    len,
                    cumulative,
                    load: Ewma::new(),
                };
                start += len;
                m
            })
            .collect();
        Group {
            balance,
            rng: AtomicU64::new(seed.unwrap_or_else(random_seed)),
            members,
            total_weight: cumulative,
            units: start,
            identity,
        }
    }

    pub(crate) fn units(&self) -> usize {
        self.units
    }

    /// Deployments in the group.
    pub(crate) fn members(&self) -> usize {
        self.members.len()
    }

    /// The key of `session`'s pin on this route.
    pub(crate) fn session_key(&self, session: u64) -> crate::affinity::SessionKey {
        crate::affinity::SessionKey::on(session, self.identity)
    }

    /// The next number of the group's generator: SplitMix64 over an atomic
    /// counter, so it is lock-free, and a seed makes it reproducible.
    fn next_u64(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (Lemire's multiply-shift; `n` > 0).
    fn below(&self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// The member that goes first for one request.
    pub(crate) fn choose(&self, now: Instant) -> usize {
        let n = self.members.len();
        if n < 2 {
            return 0;
        }
        match self.balance {
            Balance::Weighted => {
                if self.total_weight == 0 {
                    return 0;
                }
                let r = self.below(self.total_weight);
                self.members.iter().position(|m| r < m.cumulative).unwrap_or(0)
            }
            Balance::LeastLatency => {
                // Two distinct members at random (tower's `sample_floyd2`).
                let a = self.below(n as u64) as usize;
                let mut b = self.below(n as u64 - 1) as usize;
                if b >= a {
                    b += 1;
                }
                let cost = |i: usize| self.members.get(i).map_or(f64::INFINITY, |m| m.load.cost(now));
                if cost(a) <= cost(b) {
                    a
                } else {
                    b
                }
            }
        }
    }

    /// The offset and length of `member`'s hops within the group.
    pub(crate) fn span(&self, member: usize) -> (usize, usize) {
        self.members.get(member).map_or((0, 0), |m| (m.start, m.len))
    }

    /// Starts measuring an attempt to `member`, when the group balances by latency.
    pub(crate) fn track(self: &Arc<Self>, member: usize, now: Instant) -> Option<InFlight> {
        if self.balance != Balance::LeastLatency || self.members.len() < 2 {
            return None;
        }
        let m = self.members.get(member)?;
        m.load.pending.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            group: self.clone(),
            member,
            sent: now,
        })
    }

    /// The latency estimate of `member` now (for tests).
    #[cfg(test)]
    fn estimate(&self, member: usize, now: Instant) -> f64 {
        self.members.get(member).map_or(0.0, |m| m.load.cost(now))
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

// ===== peak-EWMA =====

/// A deployment's peak-EWMA latency and its attempts in flight.
struct Ewma {
    rtt: Mutex<Rtt>,
    pending: AtomicU32,
}

struct Rtt {
    at: Option<Instant>,
    ns: f64,
}

/// `d` in nanoseconds, exact below 2^53 ns (104 days): whole seconds and
/// the nanoseconds past them, each converted alone (`as_nanos() as f64`
/// converts a `u128`, a library call per attempt).
fn nanos(d: Duration) -> f64 {
    d.as_secs() as f64 * 1e9 + f64::from(d.subsec_nanos())
}

impl Ewma {
    fn new() -> Self {
        Ewma {
            rtt: Mutex::new(Rtt {
                at: None,
                ns: nanos(DEFAULT_LATENCY),
            }),
            pending: AtomicU32::new(0),
        }
    }

    /// The cost now: the estimate decayed to `now`, times pending + 1.
    fn cost(&self, now: Instant) -> f64 {
        let pending = self.pending.load(Ordering::Relaxed);
        let estimate = self.decayed(now);
        estimate * f64::from(pending.saturating_add(1))
    }

    /// Folds in an attempt that took `rtt`, answered at `now` (tower's
    /// `RttEstimate::update`): a peak replaces the estimate; a lower value
    /// moves it by how long ago the last update was.
    /// The first measurement replaces the default.
    fn update(&self, now: Instant, rtt: Duration) -> f64 {
        let mut r = self.rtt.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        r.fold(now, nanos(rtt))
    }

    /// The estimate decayed toward zero up to `now` (tower decays on every
    /// read, so an idle slow deployment is tried again); the default until
    /// a first measurement.
    fn decayed(&self, now: Instant) -> f64 {
        let mut r = self.rtt.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match r.at {
            None => r.ns,
            Some(_) => r.fold(now, 0.0),
        }
    }
}

impl Rtt {
    /// [`Ewma::update`] under its lock, `rtt` in nanoseconds.
    fn fold(&mut self, now: Instant, rtt: f64) -> f64 {
        self.ns = match self.at {
            None => rtt,
            Some(_) if self.ns < rtt => rtt,
            Some(at) => {
                let elapsed = nanos(now.saturating_duration_since(at));
                let decay = (-elapsed / nanos(LATENCY_DECAY)).exp();
                self.ns * decay + rtt * (1.0 - decay)
            }
        };
        self.at = Some(now);
        self.ns
    }
}

/// An attempt to a latency-balanced deployment: counted as pending until
/// it lands or is dropped.
pub(crate) struct InFlight {
    group: Arc<Group>,
    member: usize,
    sent: Instant,
}

impl InFlight {
    /// The attempt got its answer (or failed) at `now`.
    pub(crate) fn land(self, now: Instant) {
        if let Some(m) = self.group.members.get(self.member) {
            m.load.update(now, now.saturating_duration_since(self.sent));
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(m) = self.group.members.get(self.member) {
            m.load.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").field("member", &self.member).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanoseconds_are_exact_below_two_to_the_53() {
        for d in [
            Duration::ZERO,
            Duration::new(3, 5),
            Duration::from_millis(1_234),
            Duration::new(9_007_199, 254_740_991),
        ] {
            assert_eq!(nanos(d), d.as_nanos() as f64, "{d:?}");
        }
        assert!(nanos(Duration::MAX).is_finite());
    }

    #[test]
    fn weighted_choice_follows_the_weights() {
        let g = Group::new(Balance::Weighted, Some(7), &[(1, 3), (1, 1), (1, 0)]);
        let now = Instant::now();
        let mut counts = [0usize; 3];
        for _ in 0..4000 {
            counts[g.choose(now)] += 1;
        }
        assert_eq!(counts[2], 0, "a standby is never first");
        assert!((2800..=3200).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_choices() {
        let now = Instant::now();
        let a = Group::new(Balance::Weighted, Some(1), &[(1, 1), (1, 1)]);
        let b = Group::new(Balance::Weighted, Some(1), &[(1, 1), (1, 1)]);
        let picks = |g: &Group| (0..64).map(|_| g.choose(now)).collect::<Vec<_>>();
        assert_eq!(picks(&a), picks(&b));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peak_counts_at_once_and_fades() {
        let g = Arc::new(Group::new(Balance::LeastLatency, Some(3), &[(1, 1), (1, 1)]));
        let now = Instant::now();
        let slow = g.track(0, now).unwrap();
        assert!(g.estimate(0, now) > g.estimate(1, now), "a pending attempt costs");
        tokio::time::advance(Duration::from_secs(5)).await;
        slow.land(Instant::now());
        let after = Instant::now();
        assert!(g.estimate(0, after) >= nanos(Duration::from_secs(5)) * 0.99);
        // With both measured, the slow one loses every draw.
        g.track(1, after).unwrap().land(after + Duration::from_millis(100));
        assert!((0..32).all(|_| g.choose(after) == 1));
        // Idle, the peak decays toward zero.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(g.estimate(0, Instant::now()) < nanos(Duration::from_millis(100)));
    }
}
