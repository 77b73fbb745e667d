//! Sticky sessions: a conversation stays on the deployment that served it,
//! so the provider's prompt cache keeps hitting.
//!
//! A provider's prompt cache is kept per upstream: OpenAI's, Anthropic's
//! and Azure's only hit when the next turn of a conversation reaches the
//! account (and region) that saw the last one. With a route balanced over
//! several [deployments](crate::Deployment), a weighted or least-latency
//! choice per request scatters a conversation across them. An [`Affinity`]
//! pins it instead: the session's first request is balanced as usual, the
//! deployment that serves it is remembered for the session, and the
//! session's next requests go to that deployment first — for
//! [`DEFAULT_TTL`] (5 min, settable) after its last served request, as
//! the providers' caches themselves live (Anthropic: 5 min from the last
//! hit; OpenAI: 5–10 min of inactivity).
//!
//! When the pinned deployment fails (or cools down, or does not fit the
//! request), the request falls back to the route's other deployments as
//! it would without a pin, and the deployment that serves becomes the
//! session's new pin. Routes without deployments are not affected.
//!
//! The session is named by a key the user picks ([`AffinityKey`]): a
//! header such as `x-session-id`, the body's top-level `user`, or a hash of
//! the request's leading messages (with its system prompt), which stay the
//! same while a conversation grows. What the key is made of is hashed
//! (xxh3, with a fixed seed so every replica agrees) and only the hash is
//! kept: a session id, user id or prompt never sits in the store, a log or
//! a report.
//!
//! Pins live in an [`AffinityStore`]: by default a [`MemoryAffinity`],
//! bounded in the number of sessions it holds (the least recently useful
//! are evicted first), so a million distinct sessions cost no more memory
//! than its capacity. The store is a trait, so a fleet can keep its pins
//! in a shared store.
//!
//! ```
//! use llm_fallback::affinity::{Affinity, MemoryAffinity};
//! use llm_fallback::{Balance, Chain, Deployment, FallbackBuilder, Route};
//! use std::time::Duration;
//!
//! let chain = Chain::new([Route::new("claude-sonnet-4")
//!     .deployments([Deployment::new("us"), Deployment::new("eu")])
//!     .balance(Balance::LeastLatency)]);
//! let layer = FallbackBuilder::new(chain)
//!     .affinity(
//!         Affinity::header(http::HeaderName::from_static("x-session-id"))
//!             .ttl(Duration::from_secs(600))
//!             .store(MemoryAffinity::with_capacity(50_000)),
//!     )
//!     .layer();
//! # let _ = layer;
//! ```

use crate::json::scan::skip_ws;
use crate::request::RequestIndex;
use http::{HeaderMap, HeaderName};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a pin lasts after the session's last served request (5 min,
/// the life of Anthropic's and OpenAI's prompt caches).
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// How many sessions a [`MemoryAffinity::new`] holds.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The seed of the route identity hash: fixed, so replicas agree.
const SEED: u64 = 0x6c6c_6d2d_6661_6c6c; // "llm-fall"

/// What names a request's session (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AffinityKey {
    /// A request header, e.g. `x-session-id`. A request without it (or with
    /// an empty one) is balanced as usual and pins nothing.
    Header(HeaderName),
    /// The body's top-level `user` string (OpenAI chat and Responses,
    /// completions, embeddings). A request without one pins nothing.
    User,
    /// The request's leading `n` messages (chat `messages`, Responses
    /// `input` items, Anthropic `messages`), with its system prompt
    /// (Responses `instructions`, Anthropic `system`); a string prompt as a
    /// whole. These stay the same while a conversation grows, so a
    /// conversation is one session without any help from the caller; two
    /// conversations that start alike are one session too, which is what a
    /// prompt cache rewards. Hashing reads these bytes once per request
    /// (xxh3, some GB/s).
    LeadingMessages(usize),
}

/// Sticky sessions for a layer: what names a session, how long a pin
/// lasts, and where pins are kept. Given to
/// [`FallbackBuilder::affinity`](crate::FallbackBuilder::affinity).
///
/// ```
/// use llm_fallback::affinity::{Affinity, AffinityKey, DEFAULT_TTL};
///
/// let by_conversation = Affinity::leading_messages(2);
/// assert_eq!(by_conversation.key(), &AffinityKey::LeadingMessages(2));
/// assert_eq!(by_conversation.time_to_live(), DEFAULT_TTL);
/// ```
#[derive(Clone)]
pub struct Affinity {
    key: AffinityKey,
    ttl: Duration,
    store: Arc<dyn AffinityStore>,
}

impl Affinity {
    /// Sessions named by `key`, pinned for [`DEFAULT_TTL`] in a
    /// [`MemoryAffinity`] of [`DEFAULT_CAPACITY`] sessions.
    pub fn new(key: AffinityKey) -> Self {
        let key = match key {
            AffinityKey::LeadingMessages(n) => AffinityKey::LeadingMessages(n.max(1)),
            other => other,
        };
        Affinity {
            key,
            ttl: DEFAULT_TTL,
            store: Arc::new(MemoryAffinity::new()),
        }
    }

    /// Sessions named by the request header `name` (e.g. `x-session-id`).
    pub fn header(name: HeaderName) -> Self {
        Self::new(AffinityKey::Header(name))
    }

    /// Sessions named by the body's top-level `user`.
    pub fn user() -> Self {
        Self::new(AffinityKey::User)
    }

    /// Sessions named by the request's leading `n` messages (at least one)
    /// and its system prompt.
    pub fn leading_messages(n: usize) -> Self {
        Self::new(AffinityKey::LeadingMessages(n))
    }

    /// How long a pin lasts after the session's last served request
    /// (default [`DEFAULT_TTL`]).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Keeps pins in `store` instead of a [`MemoryAffinity`] of its own.
    pub fn store(self, store: impl AffinityStore) -> Self {
        self.shared_store(Arc::new(store))
    }

    /// Keeps pins in `store`, which other layers may share.
    pub fn shared_store(mut self, store: Arc<dyn AffinityStore>) -> Self {
        self.store = store;
        self
    }

    /// What names a session.
    pub fn key(&self) -> &AffinityKey {
        &self.key
    }

    /// How long a pin lasts.
    pub fn time_to_live(&self) -> Duration {
        self.ttl
    }

    pub(crate) fn store_ref(&self) -> &dyn AffinityStore {
        &*self.store
    }

    /// The hash of `req`'s session, when it names one.
    pub(crate) fn session(&self, headers: &HeaderMap, body: &[u8], index: &RequestIndex) -> Option<u64> {
        match &self.key {
            AffinityKey::Header(name) => {
                let value = headers.get(name)?.as_bytes();
                (!value.is_empty()).then(|| hash(value))
            }
            AffinityKey::User => body.get(index.user.clone()?).map(hash),
            AffinityKey::LeadingMessages(n) => leading(body, index, *n),
        }
    }
}

impl fmt::Debug for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Affinity")
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The hash of the system prompt and the first `n` elements of the
/// messages (or Responses `input`), or `None` when the request has none.
/// Each part is hashed as sent, in one pass (a client serializes a
/// conversation's turns alike).
fn leading(body: &[u8], index: &RequestIndex, n: usize) -> Option<u64> {
    let needs = &index.needs;
    let system = needs.system.clone().and_then(|s| body.get(s)).map(hash);
    let messages = needs
        .messages
        .clone()
        .or_else(|| needs.input.clone())
        .and_then(|m| body.get(m))
        .map(|m| hash(leading_elements(m, n)));
    match (system, messages) {
        (None, None) => None,
        (s, m) => Some(SessionKey::on(s.unwrap_or(0), m.unwrap_or(0)).0),
    }
}

/// `value` from its first element to the end of its `n`th when it is an
/// array, else all of it. The body was checked as JSON by the index; an
/// element that does not scan ends the part at the end of `value`.
fn leading_elements(value: &[u8], n: usize) -> &[u8] {
    if value.first() != Some(&b'[') {
        return value;
    }
    let start = skip_ws(value, 1);
    let mut pos = start;
    let mut end = start;
    for _ in 0..n {
        if value.get(pos) == Some(&b']') {
            break;
        }
        let Ok((element_end, _)) = crate::json::scan::scan_value(value, pos) else {
            end = value.len();
            break;
        };
        end = element_end;
        pos = skip_ws(value, end);
        if value.get(pos) != Some(&b',') {
            break;
        }
        pos = skip_ws(value, pos + 1);
    }
    value.get(start..end).unwrap_or(value)
}

/// A session's key in an [`AffinityStore`]: the session's hash mixed with
/// the route it is pinned on, so one session may hold a pin on each route
/// with deployments. Equal on every replica with the same configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey(u64);

impl SessionKey {
    /// The key as a number (e.g. for a shared store's key name).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// A key from a number [`as_u64`](Self::as_u64) gave.
    pub fn from_u64(key: u64) -> Self {
        SessionKey(key)
    }

    /// The key of `session` on the route whose deployments hash to `route`.
    pub(crate) fn on(session: u64, route: u64) -> Self {
        // SplitMix64's finalizer over the two: cheap, and every bit of
        // either moves every bit of the key.
        let mut z = session ^ route.rotate_left(29);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        SessionKey(z ^ (z >> 31))
    }
}

/// The identity of a route's deployments in session keys: its model and
/// its deployments' names, so a pin is dropped (never misread) when they
/// change.
pub(crate) fn route_identity<'a>(model: &str, deployments: impl Iterator<Item = Option<&'a str>>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(SEED);
    h.update(&(model.len() as u64).to_le_bytes());
    h.update(model.as_bytes());
    for name in deployments {
        let name = name.unwrap_or_default();
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
    }
    h.digest()
}

/// Where sessions' pins are kept: which deployment (by its position among
/// the route's deployments) a session goes to first, until when.
///
/// Implementations must be cheap and must not block: both methods are
/// called on the request path (`get` once per request that names a session,
/// `pin` once per served request). A store shared between replicas keeps a
/// local copy and syncs in the background, as
/// [`RedisHealth`](crate::health) does for route health.
///
/// ```
/// use llm_fallback::affinity::{AffinityStore, MemoryAffinity, SessionKey};
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// let store = MemoryAffinity::with_capacity(1_000);
/// let (session, now) = (SessionKey::from_u64(7), Instant::now());
/// assert_eq!(store.get(session, now), None);
/// store.pin(session, 1, now, Duration::from_secs(60));
/// assert_eq!(store.get(session, now), Some(1));
/// assert_eq!(store.get(session, now + Duration::from_secs(61)), None, "expired");
/// ```
pub trait AffinityStore: Send + Sync + 'static {
    /// The deployment `session` is pinned to, unless its pin expired by `now`.
    fn get(&self, session: SessionKey, now: Instant) -> Option<u32>;

    /// Pins `session` to `deployment` from `now` for `ttl` (replacing and
    /// extending any pin it had).
    fn pin(&self, session: SessionKey, deployment: u32, now: Instant, ttl: Duration);
}

/// Pins in this process, bounded in number: a concurrent cache
/// (`quick_cache`'s S3-FIFO: sessions seen once are evicted before sessions
/// that came back) holding up to its capacity of sessions, each a few dozen
/// bytes. An expired pin is never returned and is dropped when read.
pub struct MemoryAffinity {
    cache: PinTable<Pinned>,
    capacity: usize,
}

#[derive(Clone, Copy)]
struct Pinned {
    deployment: u32,
    until: Instant,
}

/// A table of pins of at most `capacity` sessions, keyed by session key.
type PinTable<V> = quick_cache::sync::Cache<u64, V, quick_cache::UnitWeighter, KeyIsHash>;

/// An empty [`PinTable`] for `capacity` sessions.
fn pin_table<V: Clone>(capacity: usize) -> PinTable<V> {
    quick_cache::sync::Cache::with(
        capacity,
        capacity as u64,
        quick_cache::UnitWeighter,
        KeyIsHash,
        Default::default(),
    )
}

/// Session keys are hashes already: the cache uses them as they are.
#[derive(Clone, Copy, Default)]
struct KeyIsHash;

impl BuildHasher for KeyIsHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; anything else is folded in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl MemoryAffinity {
    /// A store of up to [`DEFAULT_CAPACITY`] sessions.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A store of up to `capacity` sessions (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        MemoryAffinity {
            cache: pin_table(capacity),
            capacity,
        }
    }

    /// How many sessions it holds now (expired pins not read since
    /// included).
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// It holds no session.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// The most sessions it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The bytes its table uses now (for tests and dashboards).
    pub fn memory_used(&self) -> usize {
        self.cache.memory_used().total()
    }
}

impl Default for MemoryAffinity {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryAffinity")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl AffinityStore for MemoryAffinity {
    fn get(&self, session: SessionKey, now: Instant) -> Option<u32> {
        let pinned = self.cache.get(&session.0)?;
        if pinned.until <= now {
            self.cache.remove(&session.0);
            return None;
        }
        Some(pinned.deployment)
    }

    fn pin(&self, session: SessionKey, deployment: u32, now: Instant, ttl: Duration) {
        // A TTL too long to be an instant is as good as forever.
        let until = now
            .checked_add(ttl)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365));
        self.cache.insert(session.0, Pinned { deployment, until });
    }
}

impl<S: AffinityStore + ?Sized> AffinityStore for Arc<S> {
    fn get(&self, session: SessionKey, now: Instant) -> Option<u32> {
        (**self).get(session, now)
    }
    fn pin(&self, session: SessionKey, deployment: u32, now: Instant, ttl: Duration) {
        (**self).pin(session, deployment, now, ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Dialect;

    fn index(body: &[u8], dialect: Dialect) -> RequestIndex {
        dialect.index(body, false, &Default::default()).unwrap()
    }

    #[test]
    fn leading_messages_stay_the_same_while_a_conversation_grows() {
        let a = Affinity::leading_messages(2);
        let turn1 = br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"hi"}]}"#;
        let turn2 = br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"hi"},{"role":"assistant","content":"yo"},{"role":"user","content":"more"}],"temperature":1}"#;
        let other = br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"bye"}]}"#;
        let h = HeaderMap::new();
        let s = |b: &[u8]| a.session(&h, b, &index(b, Dialect::Chat));
        assert!(s(turn1).is_some());
        assert_eq!(s(turn1), s(turn2));
        assert_ne!(s(turn1), s(other));
        let one = Affinity::leading_messages(1);
        let s1 = |b: &[u8]| one.session(&h, b, &index(b, Dialect::Chat));
        assert_eq!(s1(turn1), s1(other), "one leading message: the system prompt alone");
    }

    #[test]
    fn anthropic_system_and_responses_instructions_count() {
        let a = Affinity::leading_messages(1);
        let h = HeaderMap::new();
        let m = |sys: &str| {
            let b = format!(
                r#"{{"model":"m","max_tokens":9,"system":"{sys}","messages":[{{"role":"user","content":"q"}}]}}"#
            );
            a.session(&h, b.as_bytes(), &index(b.as_bytes(), Dialect::Messages))
        };
        assert_ne!(m("a"), m("b"));
        let r = |input: &str| {
            let b = format!(r#"{{"model":"m","instructions":"i","input":{input}}}"#);
            a.session(&h, b.as_bytes(), &index(b.as_bytes(), Dialect::Responses))
        };
        assert_eq!(
            r(r#"[{"role":"user","content":"q"}]"#),
            r(r#"[{"role":"user","content":"q"},{"type":"x"}]"#)
        );
        assert_ne!(r(r#""one""#), r(r#""two""#));
        let none = br#"{"model":"m"}"#;
        assert_eq!(a.session(&h, none, &index(none, Dialect::Chat)), None);
    }

    #[test]
    fn header_and_user_sessions() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("x-session-id", v.parse().unwrap());
            m
        };
        let a = Affinity::header(HeaderName::from_static("x-session-id"));
        let body = br#"{"model":"m","user":"u1"}"#;
        let i = index(body, Dialect::Chat);
        assert_eq!(a.session(&h("s1"), body, &i), a.session(&h("s1"), b"", &i));
        assert_ne!(a.session(&h("s1"), body, &i), a.session(&h("s2"), body, &i));
        assert_eq!(a.session(&h(""), body, &i), None);
        assert_eq!(a.session(&HeaderMap::new(), body, &i), None);
        let u = Affinity::user();
        assert!(u.session(&HeaderMap::new(), body, &i).is_some());
        let anon = br#"{"model":"m"}"#;
        assert_eq!(u.session(&HeaderMap::new(), anon, &index(anon, Dialect::Chat)), None);
    }

    #[test]
    fn leading_elements_cut_after_n() {
        let cut = |v: &'static [u8], n| String::from_utf8_lossy(leading_elements(v, n)).into_owned();
        assert_eq!(cut(b"[1, 2 ,3]", 2), "1, 2");
        assert_eq!(cut(b"[ 1 ]", 5), "1");
        assert_eq!(cut(b"[]", 1), "");
        assert_eq!(cut(br#""s""#, 1), r#""s""#);
        assert_eq!(cut(b"[1,x", 3), "1,x", "what does not scan: to the end");
    }

    #[test]
    fn keys_depend_on_session_and_route() {
        let r1 = route_identity("m", [Some("a"), Some("b")].into_iter());
        let r2 = route_identity("m", [Some("a"), Some("c")].into_iter());
        let r3 = route_identity("ma", [Some(""), Some("b")].into_iter());
        assert_ne!(r1, r2);
        assert_ne!(r1, r3);
        assert_ne!(SessionKey::on(1, r1), SessionKey::on(1, r2));
        assert_ne!(SessionKey::on(1, r1), SessionKey::on(2, r1));
        assert_eq!(SessionKey::on(1, r1), SessionKey::on(1, r1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pin_expires_after_its_ttl_and_is_extended_by_a_new_pin() {
        let store = MemoryAffinity::with_capacity(16);
        let k = SessionKey::from_u64(42);
        store.pin(k, 3, Instant::now(), DEFAULT_TTL);
        tokio::time::advance(DEFAULT_TTL - Duration::from_secs(1)).await;
        assert_eq!(store.get(k, Instant::now()), Some(3));
        store.pin(k, 3, Instant::now(), DEFAULT_TTL);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(store.get(k, Instant::now()), Some(3), "extended");
        tokio::time::advance(DEFAULT_TTL).await;
        assert_eq!(store.get(k, Instant::now()), None);
        assert!(store.is_empty(), "an expired pin is dropped when read");
    }

    #[test]
    fn a_million_sessions_stay_within_the_capacity() {
        let store = MemoryAffinity::with_capacity(10_000);
        let now = Instant::now();
        let pin = |i: u64| store.pin(SessionKey::on(i, 1), (i % 3) as u32, now, DEFAULT_TTL);
        (0..20_000).for_each(pin);
        let full = store.memory_used();
        (20_000..1_000_000).for_each(pin);
        assert!(store.len() <= 10_000 + 10_000 / 10, "{} sessions held", store.len());
        // Once full, the table does not grow with more sessions.
        assert!(
            store.memory_used() <= full + full / 2,
            "{} → {} bytes",
            full,
            store.memory_used()
        );
        assert!(store.memory_used() < 4 << 20, "{} bytes", store.memory_used());
        // Recent sessions are still there.
        assert_eq!(store.get(SessionKey::on(999_999, 1), now), Some((999_999 % 3) as u32));
    }
}

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub use self::redis::{RedisAffinity, RedisAffinityBuilder, RedisAffinityError};
