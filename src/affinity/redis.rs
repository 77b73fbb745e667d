//! [`RedisAffinity`]: sticky-session pins shared by a fleet through Redis
//! (or a Redis-protocol server such as Valkey), feature `redis`.
//!
//! (The store's documentation is on [`RedisAffinity`].)

use super::{AffinityStore, SessionKey, DEFAULT_CAPACITY};
use futures_core::Stream;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Ops the queue to the background task holds at most.
const QUEUE: usize = 4096;
/// Ops the task takes from the queue at once (one transaction of pins).
const BATCH: usize = 256;
/// The most subscription messages the task applies in a row before it
/// looks at its ops again.
const MESSAGES_PER_TURN: usize = 1024;
/// Fetches in flight at most.
const FETCHES: usize = 1024;
/// The wire format's version byte.
const VERSION: u8 = 1;
/// Header of a published batch: version, replica, nonce.
const HEADER: usize = 1 + 8 + 8;
/// One pin in a published batch: key, deployment, TTL ms, sequence.
const RECORD: usize = 8 + 4 + 8 + 4;
/// How often the subscription is pinged (25 retry intervals, 1–5 s), so
/// one that went silent (a peer gone without a reset) is noticed and made
/// again.
fn keepalive(retry: Duration) -> Duration {
    retry
        .saturating_mul(25)
        .clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// Sticky-session pins shared by every process that names the same Redis
/// and key prefix, feature `redis`.
///
/// Behind a plain load balancer a session's requests reach the replicas in
/// turn, so every replica must learn a pin quickly, and no request may wait
/// on Redis for it. So:
///
/// - `get` reads a local bounded table (the same S3-FIFO cache as
///   [`MemoryAffinity`](super::MemoryAffinity), `capacity` sessions);
/// - `pin` updates it at once and, when the pin is new, moved to another
///   deployment, or last published more than half its TTL ago (a busy
///   session does not publish on every request), queues it for a background
///   task (a bounded queue: what does not fit is dropped and counted);
/// - the task writes each batch in one transaction:
///   `SET {prefix}:pin:{key} {deployment} PX {ttl}` per pin and one
///   `PUBLISH {prefix}:pins` of the batch (24 bytes a pin);
/// - the task is subscribed to `{prefix}:pins` and applies the pins
///   published there to its table in the channel's order — its own too,
///   when one is its latest for the session — so two replicas that pin a
///   session at the same moment to different deployments end up agreeing
///   (on the one Redis published last); a pin learned this way lasts its TTL
///   from when it is received — no host's clock is compared with another's;
/// - on a local miss, `get` (which still answers "no pin" at once) queues a
///   `GET` of the session's key, at most one in flight per session, so the
///   *next* request of a session pinned elsewhere, before this replica
///   started or while its subscription was down, finds the fleet's pin
///   ([`fetch_on_miss`](RedisAffinityBuilder::fetch_on_miss), on by default).
///
/// Keys, under one prefix (`llm-fallback` by default):
///
/// | key | type | what |
/// | --- | --- | --- |
/// | `{prefix}:pin:{key}` | string, TTL | the deployment (its position in the route) the session goes to first; `{key}` is the 16 hex digits of the [`SessionKey`] |
/// | `{prefix}:pins` | channel | batches of pins: replica id, then per pin the session key, deployment, TTL in ms |
///
/// A session key is a hash of the session (header value, `user` or leading
/// messages) and the route: no session id, user id, prompt, header, API key
/// or body is ever stored or published. A batch's keys go in one
/// transaction, so the store wants a plain (not cluster) Redis.
///
/// Redis down or slow: every replica goes on with its local pins (logged
/// once; with the `metrics` feature the gauge
/// `llm_fallback_affinity_store_connected` drops to 0 and
/// `llm_fallback_affinity_store_errors_total` counts), pins made meanwhile
/// stay local, and sharing resumes by itself:
/// once it is back, each session's next pin is published again, so a Redis
/// that restarted empty, and replicas that missed messages meanwhile, are
/// refilled as sessions are served.
///
/// ```no_run
/// use llm_fallback::affinity::{Affinity, RedisAffinity};
/// use llm_fallback::{Chain, Deployment, FallbackBuilder, Route};
/// use std::sync::Arc;
///
/// # fn f() -> Result<(), llm_fallback::affinity::RedisAffinityError> {
/// let pins = RedisAffinity::builder("redis://127.0.0.1:6379/0")
///     .key_prefix("my-gateway")
///     .capacity(50_000)
///     .build()?;
/// let chain = Chain::new([Route::new("claude-sonnet-4")
///     .deployments([Deployment::new("us"), Deployment::new("eu")])]);
/// let layer = FallbackBuilder::new(chain)
///     .affinity(
///         Affinity::header(http::HeaderName::from_static("x-session-id"))
///             .shared_store(Arc::new(pins)),
///     )
///     .layer();
/// # let _ = layer;
/// # Ok(()) }
/// ```
///
/// Clones share one table and one background task, which ends when the
/// last clone is dropped. The task runs on the tokio runtime the store is
/// built in (or, built outside one, on a thread of its own).
/// [`connected`](Self::connected), [`dropped`](Self::dropped) and
/// [`len`](Self::len) are for dashboards; [`sync`](Self::sync) for tests.
#[derive(Clone)]
pub struct RedisAffinity {
    inner: Arc<Inner>,
}

struct Inner {
    cache: super::PinTable<Entry>,
    capacity: usize,
    prefix: String,
    /// This instance's id in what it publishes.
    replica: u64,
    ops: mpsc::Sender<Op>,
    connected: AtomicBool,
    /// When the store last (re)connected, in ns after `born`: pins
    /// published before are published again (Redis may have restarted
    /// empty, and other replicas missed what was published meanwhile).
    back: AtomicU64,
    born: Instant,
    dropped: AtomicU64,
    /// The sequence number of this replica's last publication of a pin.
    seq: AtomicU32,
    /// Sessions whose fetch is queued or in flight (`None`: no fetches).
    fetching: Option<Mutex<HashSet<u64>>>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    deployment: u32,
    until: Instant,
    /// When this pin was last published (by any replica), as far as this
    /// one knows; `None`: not yet (or its publication failed).
    published: Option<Instant>,
    /// This replica's last publication of the key (0: none).
    seq: u32,
}

/// A pin as published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    key: u64,
    deployment: u32,
    ttl_ms: u64,
    seq: u32,
}

/// Work queued for the background task.
#[derive(Debug)]
enum Op {
    Pin(Record),
    Fetch(u64),
    /// Done with everything queued before it, and every publication up to
    /// now received back.
    Sync(oneshot::Sender<bool>),
}

/// Builds a [`RedisAffinity`] (see there).
pub struct RedisAffinityBuilder {
    url: String,
    prefix: String,
    capacity: usize,
    timeout: Duration,
    retry: Duration,
    fetch: bool,
}

/// A [`RedisAffinity`] that could not be built. Its message never repeats
/// the URL (it may carry a password).
#[derive(Debug)]
#[non_exhaustive]
pub struct RedisAffinityError {
    kind: ErrorKind,
}

#[derive(Debug)]
enum ErrorKind {
    Url(String),
    Runtime(String),
}

impl fmt::Display for RedisAffinityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Url(why) => write!(
                f,
                "invalid redis affinity store URL ({why}); expected redis://[user:password@]host:port/db"
            ),
            ErrorKind::Runtime(why) => write!(f, "the redis affinity store could not start its background task: {why}"),
        }
    }
}

impl std::error::Error for RedisAffinityError {}

impl fmt::Debug for RedisAffinityBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL: it may carry a password.
        f.debug_struct("RedisAffinityBuilder")
            .field("prefix", &self.prefix)
            .field("capacity", &self.capacity)
            .field("timeout", &self.timeout)
            .field("retry_interval", &self.retry)
            .field("fetch_on_miss", &self.fetch)
            .finish_non_exhaustive()
    }
}

impl RedisAffinityBuilder {
    /// Key prefix shared by the fleet (default `llm-fallback`); replicas
    /// with different prefixes share nothing.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How many sessions the local table holds at most (default
    /// [`DEFAULT_CAPACITY`], at least one): the least recently useful are
    /// evicted first, whether pinned here or learned from the fleet.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// How long a Redis command may take before Redis counts as down
    /// (default 500 ms). Requests never wait for it.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d.max(Duration::from_millis(1));
        self
    }

    /// How often a replica that lost Redis tries again (default 200 ms, at
    /// least 10 ms). Its subscription is pinged every 25 of these (1 to
    /// 5 s), so one that went silent is noticed too.
    pub fn retry_interval(mut self, d: Duration) -> Self {
        self.retry = d.max(Duration::from_millis(10));
        self
    }

    /// Whether a local miss queues a `GET` of the session's pin, so the
    /// session's next request finds a pin this replica missed (default on;
    /// at most one in flight per session, 1 024 in all).
    pub fn fetch_on_miss(mut self, yes: bool) -> Self {
        self.fetch = yes;
        self
    }

    /// Checks the URL and starts the background task (which connects, and
    /// reconnects, by itself: Redis need not be up yet).
    pub fn build(self) -> Result<RedisAffinity, RedisAffinityError> {
        let client = crate::redis_task::client(&self.url).map_err(|why| RedisAffinityError {
            kind: ErrorKind::Url(why),
        })?;
        let config = crate::redis_task::manager_config(self.timeout, self.retry);
        let (ops, rx) = mpsc::channel(QUEUE);
        let capacity = self.capacity;
        let inner = Arc::new(Inner {
            cache: super::pin_table(capacity),
            capacity,
            prefix: self.prefix,
            replica: replica_id(),
            ops,
            connected: AtomicBool::new(false),
            back: AtomicU64::new(0),
            born: Instant::now(),
            dropped: AtomicU64::new(0),
            seq: AtomicU32::new(0),
            fetching: self.fetch.then(|| Mutex::new(HashSet::new())),
        });
        let task = Task {
            inner: Arc::downgrade(&inner),
            channel: channel(&inner.prefix),
            prefix: inner.prefix.clone(),
            replica: inner.replica,
            client,
            config,
            con: None,
            sub: None,
            sink: None,
            next_ping: Instant::now(),
            timeout: self.timeout,
            retry: self.retry,
            next_retry: Instant::now(),
            nonce: 0,
            waiters: Vec::new(),
            ops_first: false,
            down_logged: false,
            ever_connected: false,
        };
        crate::redis_task::spawn("llm-fallback-redis-pins", task.run(rx)).map_err(|why| RedisAffinityError {
            kind: ErrorKind::Runtime(why),
        })?;
        Ok(RedisAffinity { inner })
    }
}

/// An id for this instance, unlike any other replica's (process, start
/// time, instance count, hashed).
fn replica_id() -> u64 {
    static INSTANCES: AtomicU64 = AtomicU64::new(0);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(&std::process::id().to_le_bytes());
    bytes.extend_from_slice(&started.to_le_bytes());
    bytes.extend_from_slice(&INSTANCES.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

impl RedisAffinity {
    /// A builder for the Redis at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisAffinityBuilder {
        RedisAffinityBuilder {
            url: url.into(),
            prefix: "llm-fallback".into(),
            capacity: DEFAULT_CAPACITY,
            timeout: Duration::from_millis(500),
            retry: Duration::from_millis(200),
            fetch: true,
        }
    }

    /// Whether this replica is subscribed and its last exchange with Redis
    /// worked (else it runs on local pins alone).
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// Sends everything queued so far and waits (bounded by the timeout)
    /// until the fleet's publications up to now have been applied here;
    /// `true` when Redis answered. For tests and for a graceful shutdown;
    /// requests never need it.
    pub async fn sync(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.inner.ops.send(Op::Sync(tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Pins and fetches dropped because the queue to Redis was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// How many sessions the local table holds now (expired pins not read
    /// since included).
    pub fn len(&self) -> usize {
        self.inner.cache.len()
    }

    /// The local table holds no session.
    pub fn is_empty(&self) -> bool {
        self.inner.cache.is_empty()
    }

    /// The most sessions the local table holds.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// The bytes the local table uses now (for tests and dashboards).
    pub fn memory_used(&self) -> usize {
        self.inner.cache.memory_used().total()
    }
}

impl fmt::Debug for RedisAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL: it may carry a password.
        f.debug_struct("RedisAffinity")
            .field("prefix", &self.inner.prefix)
            .field("connected", &self.connected())
            .field("len", &self.len())
            .field("capacity", &self.inner.capacity)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn set_connected(&self, yes: bool) {
        self.connected.store(yes, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::gauge!("llm_fallback_affinity_store_connected").set(if yes { 1.0 } else { 0.0 });
    }

    fn send(&self, op: Op) -> bool {
        let sent = self.ops.try_send(op).is_ok();
        if !sent {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Queues a fetch of `key`, unless one is queued already, too many
    /// are, or Redis is down.
    fn fetch(&self, key: u64) {
        let Some(fetching) = &self.fetching else { return };
        if !self.connected.load(Ordering::Relaxed) {
            return;
        }
        {
            // A few hash-set operations: poison is ignored.
            let mut set = fetching.lock().unwrap_or_else(|p| p.into_inner());
            if set.len() >= FETCHES || !set.insert(key) {
                return;
            }
        }
        if !self.send(Op::Fetch(key)) {
            self.fetched(key);
        }
    }

    fn fetched(&self, key: u64) {
        if let Some(fetching) = &self.fetching {
            fetching.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        }
    }

    /// A publication of `r` failed: the session's next pin tries again.
    fn unpublished(&self, r: &Record) {
        if let Some(mut e) = self.cache.get(&r.key) {
            if e.seq == r.seq && e.published.is_some() {
                e.published = None;
                self.cache.insert(r.key, e);
            }
        }
    }

    /// Applies a published pin received at `now`. This replica's own is
    /// applied only when it is its latest publication of the key, so a
    /// session re-pinned here is not sent back by the echo of its old pin,
    /// while a pin another replica published between the two is undone by
    /// the later one, as on every other replica.
    fn learn(&self, r: &Record, own: bool, now: Instant) {
        let current = self.cache.get(&r.key);
        if own {
            match current {
                // The latest, and nothing came between: already in place.
                Some(e) if e.seq == r.seq && e.deployment == r.deployment => return,
                Some(e) if e.seq == r.seq => {}
                _ => return,
            }
        }
        self.cache.insert(
            r.key,
            Entry {
                deployment: r.deployment,
                until: until(now, Duration::from_millis(r.ttl_ms)),
                published: Some(now),
                seq: current.map_or(0, |e| e.seq),
            },
        );
    }

    /// A pin fetched from Redis with `pttl` left: kept unless the session
    /// has a pin here by now. Published: `None`, so this replica's first
    /// use of it publishes a full TTL.
    fn adopt(&self, key: u64, deployment: u32, pttl: Duration, now: Instant) {
        if self.cache.get(&key).is_some_and(|e| e.until > now) {
            return;
        }
        self.cache.insert(
            key,
            Entry {
                deployment,
                until: until(now, pttl),
                published: None,
                seq: 0,
            },
        );
    }
}

fn until(now: Instant, ttl: Duration) -> Instant {
    // A TTL too long to be an instant is as good as forever.
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

impl AffinityStore for RedisAffinity {
    fn get(&self, session: SessionKey, now: Instant) -> Option<u32> {
        let inner = &*self.inner;
        let key = session.as_u64();
        match inner.cache.get(&key) {
            Some(e) if e.until > now => return Some(e.deployment),
            Some(_) => drop(inner.cache.remove(&key)),
            None => {}
        }
        inner.fetch(key);
        None
    }

    fn pin(&self, session: SessionKey, deployment: u32, now: Instant, ttl: Duration) {
        let inner = &*self.inner;
        let key = session.as_u64();
        let old = inner.cache.get(&key).filter(|e| e.until > now);
        let mut entry = Entry {
            deployment,
            until: until(now, ttl),
            published: old.and_then(|e| e.published),
            seq: old.map_or(0, |e| e.seq),
        };
        let back = inner.born + Duration::from_nanos(inner.back.load(Ordering::Relaxed));
        let due = match old {
            None => true,
            Some(e) => {
                e.deployment != deployment
                    || e.published
                        .is_none_or(|p| p < back || now.saturating_duration_since(p) >= ttl / 2)
            }
        };
        // While Redis is down the pin stays local (and unpublished, so the
        // session's next pin after Redis is back publishes it).
        if due && inner.connected.load(Ordering::Relaxed) {
            let seq = inner.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1).max(1);
            let record = Record {
                key,
                deployment,
                ttl_ms: millis(ttl).max(1),
                seq,
            };
            entry.seq = seq;
            entry.published = inner.send(Op::Pin(record)).then_some(now);
        } else if due {
            entry.published = None;
        }
        inner.cache.insert(key, entry);
    }
}

// ===== the wire format =====

/// A batch as published: version, replica, nonce, then the pins.
fn encode(replica: u64, nonce: u64, pins: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + RECORD * pins.len());
    out.push(VERSION);
    out.extend_from_slice(&replica.to_le_bytes());
    out.extend_from_slice(&nonce.to_le_bytes());
    for r in pins {
        out.extend_from_slice(&r.key.to_le_bytes());
        out.extend_from_slice(&r.deployment.to_le_bytes());
        out.extend_from_slice(&r.ttl_ms.to_le_bytes());
        out.extend_from_slice(&r.seq.to_le_bytes());
    }
    out
}

/// A received batch: replica, nonce, pins; `None` when it is not one (a
/// later version, or garbage someone else published on the channel).
fn decode(bytes: &[u8]) -> Option<(u64, u64, Vec<Record>)> {
    fn u64_at(b: &[u8], at: usize) -> Option<u64> {
        Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
    }
    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }
    if bytes.first() != Some(&VERSION) {
        return None;
    }
    let replica = u64_at(bytes, 1)?;
    let nonce = u64_at(bytes, 9)?;
    let body = bytes.get(HEADER..)?;
    if body.len() % RECORD != 0 {
        return None;
    }
    let pins = body
        .chunks_exact(RECORD)
        .map(|r| {
            Some(Record {
                key: u64_at(r, 0)?,
                deployment: u32_at(r, 8)?,
                ttl_ms: u64_at(r, 12)?,
                seq: u32_at(r, 20)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((replica, nonce, pins))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `{prefix}:pin:{key as 16 hex digits}`.
fn pin_key(prefix: &str, key: u64) -> String {
    format!("{prefix}:pin:{key:016x}")
}

/// `{prefix}:pins`: the channel pins are published on.
fn channel(prefix: &str) -> String {
    format!("{prefix}:pins")
}

// ===== the background task =====

struct Task {
    inner: Weak<Inner>,
    prefix: String,
    channel: String,
    replica: u64,
    client: redis::Client,
    config: ConnectionManagerConfig,
    con: Option<ConnectionManager>,
    /// The subscription to the channel; `None` while Redis is down.
    sub: Option<PubSubStream>,
    /// Its connection's other half, to ping it.
    sink: Option<PubSubSink>,
    /// When to ping the subscription next.
    next_ping: Instant,
    timeout: Duration,
    retry: Duration,
    /// When to try to subscribe again.
    next_retry: Instant,
    /// The nonce of this replica's last publication.
    nonce: u64,
    /// Syncs waiting for their publication to come back: nonce, deadline.
    waiters: Vec<(u64, Instant, oneshot::Sender<bool>)>,
    ops_first: bool,
    down_logged: bool,
    ever_connected: bool,
}

enum Event {
    Message(Option<redis::Msg>),
    Ops(Option<Op>),
    Timer,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        self.subscribe().await;
        loop {
            let wake = self.wake();
            let timer = std::pin::pin!(tokio::time::sleep_until(wake));
            let event = self.next(&mut rx, timer).await;
            let Some(inner) = self.inner.upgrade() else { return };
            match event {
                Event::Message(Some(msg)) => {
                    self.received(&inner, msg.get_payload_bytes());
                    // The client library queues the channel's messages
                    // without a bound, as fast as Redis sends them: take
                    // every one that is ready (up to a budget) before the
                    // next op batch, which waits for a round trip, or a
                    // busy fleet's pins would pile up in that queue.
                    for _ in 1..MESSAGES_PER_TURN {
                        match self.ready_message().await {
                            Some(Some(msg)) => self.received(&inner, msg.get_payload_bytes()),
                            Some(None) => {
                                self.closed(&inner);
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Event::Message(None) => self.closed(&inner),
                Event::Ops(None) => return, // the store was dropped
                Event::Ops(Some(op)) => {
                    let mut batch = vec![op];
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    self.handle(&inner, batch).await;
                }
                Event::Timer => {
                    let now = Instant::now();
                    if self.sub.is_none() && now >= self.next_retry {
                        self.subscribe().await;
                    } else if now >= self.next_ping {
                        self.keepalive(&inner).await;
                    }
                    self.expire_waiters(Instant::now());
                }
            }
        }
    }

    /// When the loop must wake without a message or op: the next retry
    /// (or ping), or the first sync deadline.
    fn wake(&self) -> Instant {
        let next = if self.sub.is_none() {
            self.next_retry
        } else {
            self.next_ping
        };
        self.waiters.iter().map(|w| w.1).fold(next, Instant::min)
    }

    /// Pings the subscription's connection; silent or failed, it is made
    /// again at the next retry.
    async fn keepalive(&mut self, inner: &Inner) {
        self.next_ping = Instant::now() + keepalive(self.retry);
        let Some(sink) = self.sink.as_mut() else { return };
        let ping = tokio::time::timeout(self.timeout, sink.ping::<redis::Value>()).await;
        if !matches!(ping, Ok(Ok(_))) {
            self.unsubscribed();
            self.outcome(inner, Err("the subscription did not answer a ping".into()));
        }
    }

    /// The subscription's stream ended.
    fn closed(&mut self, inner: &Inner) {
        self.unsubscribed();
        self.outcome(inner, Err("the subscription was closed".into()));
    }

    /// The subscription is gone: made again at the next retry.
    fn unsubscribed(&mut self) {
        self.sub = None;
        self.sink = None;
        self.next_retry = Instant::now() + self.retry;
    }

    /// The next message, op or timer; messages and ops take turns going
    /// first, so neither a busy fleet nor busy requests starve the other.
    async fn next(&mut self, rx: &mut mpsc::Receiver<Op>, mut timer: Pin<&mut tokio::time::Sleep>) -> Event {
        self.ops_first = !self.ops_first;
        let ops_first = self.ops_first;
        std::future::poll_fn(|cx| {
            if ops_first {
                if let Poll::Ready(op) = rx.poll_recv(cx) {
                    return Poll::Ready(Event::Ops(op));
                }
            }
            if let Some(sub) = self.sub.as_mut() {
                if let Poll::Ready(msg) = Pin::new(sub).poll_next(cx) {
                    return Poll::Ready(Event::Message(msg));
                }
            }
            if let Poll::Ready(op) = rx.poll_recv(cx) {
                return Poll::Ready(Event::Ops(op));
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            Poll::Pending
        })
        .await
    }

    /// A message of the subscription that is ready now (`Some(None)`: the
    /// subscription ended), or `None` when none is.
    async fn ready_message(&mut self) -> Option<Option<redis::Msg>> {
        let sub = self.sub.as_mut()?;
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *sub).poll_next(cx) {
                Poll::Ready(msg) => Some(msg),
                Poll::Pending => None,
            })
        })
        .await
    }

    /// Pins and fetches in order; a sync after what came before it.
    async fn handle(&mut self, inner: &Inner, batch: Vec<Op>) {
        let mut pins = Vec::new();
        let mut fetches = Vec::new();
        for op in batch {
            match op {
                Op::Pin(r) => pins.push(r),
                Op::Fetch(k) => fetches.push(k),
                Op::Sync(reply) => {
                    self.flush(inner, &mut pins, &mut fetches).await;
                    self.sync(inner, reply).await;
                }
            }
        }
        self.flush(inner, &mut pins, &mut fetches).await;
    }

    async fn flush(&mut self, inner: &Inner, pins: &mut Vec<Record>, fetches: &mut Vec<u64>) {
        if !pins.is_empty() {
            let batch = std::mem::take(pins);
            if inner.connected.load(Ordering::Relaxed) {
                let done = self.publish(&batch).await;
                if done.is_err() {
                    batch.iter().for_each(|r| inner.unpublished(r));
                }
                self.outcome(inner, done);
            } else {
                // Down: the pins stay local, to be published next time.
                batch.iter().for_each(|r| inner.unpublished(r));
            }
        }
        if !fetches.is_empty() {
            let keys = std::mem::take(fetches);
            if inner.connected.load(Ordering::Relaxed) {
                let done = self.fetch(inner, &keys).await;
                self.outcome(inner, done);
            }
            keys.iter().for_each(|k| inner.fetched(*k));
        }
    }

    /// One transaction: the pins' keys, and the batch on the channel.
    async fn publish(&mut self, pins: &[Record]) -> Result<(), String> {
        let mut con = self.con().await?;
        self.nonce += 1;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for r in pins {
            pipe.cmd("SET")
                .arg(pin_key(&self.prefix, r.key))
                .arg(r.deployment)
                .arg("PX")
                .arg(r.ttl_ms)
                .ignore();
        }
        pipe.cmd("PUBLISH")
            .arg(&self.channel)
            .arg(encode(self.replica, self.nonce, pins))
            .ignore();
        self.bounded(pipe.query_async::<()>(&mut con)).await
    }

    /// `GET` and `PTTL` of each key; what is found is adopted.
    async fn fetch(&mut self, inner: &Inner, keys: &[u64]) -> Result<(), String> {
        let mut con = self.con().await?;
        let mut pipe = redis::pipe();
        for k in keys {
            let name = pin_key(&self.prefix, *k);
            pipe.cmd("GET").arg(&name).cmd("PTTL").arg(&name);
        }
        let values: Vec<redis::Value> = self.bounded(pipe.query_async(&mut con)).await?;
        // TTLs count from about now (the reply), on the server's clock.
        let now = Instant::now();
        for (k, pair) in keys.iter().zip(values.chunks(2)) {
            let [value, pttl] = pair else { continue };
            let deployment = match value {
                redis::Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse::<u32>().ok()),
                _ => None,
            };
            let pttl = match pttl {
                redis::Value::Int(ms) => u64::try_from(*ms).ok().filter(|ms| *ms > 0),
                _ => None,
            };
            if let (Some(d), Some(ms)) = (deployment, pttl) {
                inner.adopt(*k, d, Duration::from_millis(ms), now);
            }
        }
        Ok(())
    }

    /// Publishes an empty batch and waits (in the loop) for it to come
    /// back: everything published before it has been applied by then.
    async fn sync(&mut self, inner: &Inner, reply: oneshot::Sender<bool>) {
        if self.sub.is_none() {
            self.subscribe().await;
        }
        if self.sub.is_none() {
            let _ = reply.send(false);
            return;
        }
        match self.publish(&[]).await {
            Ok(()) => {
                // The publication's round trip, and a margin for a busy host.
                let deadline = Instant::now() + self.timeout.saturating_mul(2);
                self.waiters.push((self.nonce, deadline, reply));
            }
            Err(why) => {
                self.outcome(inner, Err(why));
                let _ = reply.send(false);
            }
        }
    }

    fn expire_waiters(&mut self, now: Instant) {
        let (late, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters).into_iter().partition(|w| w.1 <= now);
        self.waiters = waiting;
        for (_, _, reply) in late {
            let _ = reply.send(false);
        }
    }

    fn received(&mut self, inner: &Inner, payload: &[u8]) {
        let Some((replica, nonce, pins)) = decode(payload) else {
            return;
        };
        let now = Instant::now();
        let own = replica == self.replica;
        for r in &pins {
            inner.learn(r, own, now);
        }
        if own {
            let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
                .into_iter()
                .partition(|w| w.0 <= nonce);
            self.waiters = waiting;
            for (_, _, reply) in done {
                let _ = reply.send(true);
            }
        }
    }

    /// Subscribes to the channel (connecting first), bounded by the timeout.
    async fn subscribe(&mut self) {
        let done = self.try_subscribe().await;
        self.next_retry = Instant::now() + self.retry;
        if let Some(inner) = self.inner.upgrade() {
            self.outcome(&inner, done);
        }
    }

    async fn try_subscribe(&mut self) -> Result<(), String> {
        self.sub = None;
        self.sink = None;
        self.con().await?;
        let mut pubsub = match tokio::time::timeout(self.timeout, self.client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(format!("{:?}", e.kind())),
            Err(_) => return Err("connect timed out".into()),
        };
        self.bounded(pubsub.subscribe(&self.channel)).await?;
        let (sink, stream) = pubsub.split();
        self.sub = Some(stream);
        self.sink = Some(sink);
        self.next_ping = Instant::now() + keepalive(self.retry);
        Ok(())
    }

    /// Logs (once per outage) and flags a failed exchange, or a recovery.
    fn outcome(&mut self, inner: &Inner, done: Result<(), String>) {
        match done {
            Ok(()) => {
                if !inner.connected.load(Ordering::Relaxed) && self.sub.is_some() {
                    if self.ever_connected {
                        tracing::info!(prefix = %self.prefix, "llm fallback affinity store: redis is back, sharing pins again");
                    }
                    self.ever_connected = true;
                    self.down_logged = false;
                    let back = u64::try_from(inner.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    inner.back.store(back, Ordering::Relaxed);
                    inner.set_connected(true);
                }
            }
            Err(why) => {
                #[cfg(feature = "metrics")]
                metrics::counter!("llm_fallback_affinity_store_errors_total").increment(1);
                if inner.connected.load(Ordering::Relaxed) || !self.down_logged {
                    tracing::warn!(
                        prefix = %self.prefix,
                        error = %why,
                        "llm fallback affinity store: redis unreachable, going on with local pins"
                    );
                    self.down_logged = true;
                }
                inner.set_connected(false);
                // A command failed: the subscription may be as stale.
                if self.sub.is_some() {
                    self.unsubscribed();
                }
                for (_, _, reply) in self.waiters.drain(..) {
                    let _ = reply.send(false);
                }
            }
        }
    }

    /// The connection, made if there is none yet.
    async fn con(&mut self) -> Result<ConnectionManager, String> {
        if let Some(con) = &self.con {
            return Ok(con.clone());
        }
        let make = ConnectionManager::new_with_config(self.client.clone(), self.config.clone());
        let con = match tokio::time::timeout(self.timeout.saturating_mul(2), make).await {
            Ok(Ok(con)) => con,
            Ok(Err(e)) => return Err(format!("{:?}", e.kind())),
            Err(_) => return Err("connect timed out".into()),
        };
        self.con = Some(con.clone());
        Ok(con)
    }

    async fn bounded<T>(&self, fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{:?}", e.kind())),
            Err(_) => Err("timed out".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_only_the_hashed_session() {
        assert_eq!(pin_key("p", 0xab), "p:pin:00000000000000ab");
        assert_eq!(pin_key("p", u64::MAX), "p:pin:ffffffffffffffff");
        assert_eq!(channel("p"), "p:pins");
    }

    #[test]
    fn batches_round_trip_and_garbage_is_refused() {
        let pins = [
            Record {
                key: 1,
                deployment: 2,
                ttl_ms: 300_000,
                seq: 9,
            },
            Record {
                key: u64::MAX,
                deployment: u32::MAX,
                ttl_ms: 1,
                seq: 1,
            },
        ];
        let bytes = encode(7, 42, &pins);
        assert_eq!(bytes.len(), HEADER + 2 * RECORD);
        assert_eq!(decode(&bytes), Some((7, 42, pins.to_vec())));
        assert_eq!(decode(&encode(7, 1, &[])), Some((7, 1, Vec::new())));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None, "a torn record");
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"\x02rest-of-a-later-version"), None);
        assert_eq!(decode(&bytes[..5]), None);
    }

    #[tokio::test]
    async fn a_bad_url_fails_at_build_without_quoting_it() {
        let e = RedisAffinity::builder("http://user:hunter2@nowhere")
            .build()
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("invalid redis affinity store URL"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        let builder = RedisAffinity::builder("redis://:hunter2@127.0.0.1:1/0");
        assert!(!format!("{builder:?}").contains("hunter2"));
        let store = builder.build().unwrap();
        assert!(!format!("{store:?}").contains("hunter2"));
    }

    #[test]
    fn outside_a_runtime_it_runs_on_a_thread_of_its_own_and_pins_locally() {
        let store = RedisAffinity::builder("redis://127.0.0.1:1/0").build().unwrap();
        assert!(!store.connected());
        let (k, now) = (SessionKey::from_u64(5), Instant::now());
        assert_eq!(store.get(k, now), None);
        store.pin(k, 1, now, Duration::from_secs(60));
        assert_eq!(store.get(k, now), Some(1));
        assert_eq!(store.get(k, now + Duration::from_secs(61)), None);
    }

    #[tokio::test]
    async fn own_echoes_apply_only_when_latest() {
        let store = RedisAffinity::builder("redis://127.0.0.1:1/0").build().unwrap();
        let inner = &store.inner;
        let now = Instant::now();
        let entry = |deployment, seq| Entry {
            deployment,
            until: now + Duration::from_secs(60),
            published: Some(now),
            seq,
        };
        let rec = |deployment, seq| Record {
            key: 3,
            deployment,
            ttl_ms: 60_000,
            seq,
        };
        // Pinned here to 1 (seq 5), then re-pinned to 2 (seq 6).
        inner.cache.insert(3, entry(2, 6));
        inner.learn(&rec(1, 5), true, now);
        assert_eq!(
            store.get(SessionKey::from_u64(3), now),
            Some(2),
            "a stale echo is ignored"
        );
        // Another replica's pin to 0 came after; then the echo of seq 6.
        inner.learn(&rec(0, 1), false, now);
        assert_eq!(store.get(SessionKey::from_u64(3), now), Some(0));
        inner.learn(&rec(2, 6), true, now);
        assert_eq!(
            store.get(SessionKey::from_u64(3), now),
            Some(2),
            "the channel's last word"
        );
        // A fetched pin never replaces a live one.
        inner.adopt(3, 1, Duration::from_secs(9), now);
        assert_eq!(store.get(SessionKey::from_u64(3), now), Some(2));
        inner.adopt(4, 1, Duration::from_secs(9), now);
        assert_eq!(store.get(SessionKey::from_u64(4), now), Some(1));
    }
}
