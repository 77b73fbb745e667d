//! [`RedisHealth`]: route health shared by a fleet through Redis (or a
//! Redis-protocol server such as Valkey), feature `redis`.
//!
//! The request path never waits on Redis. `admit` reads a local snapshot
//! (a [`Cooldowns`] with the same rules as the in-memory store); `record`
//! updates it at once and queues the change for a background task, which
//! also polls Redis every `poll_interval` (200 ms by default) for what the
//! other replicas learned.
//!
//! Keys, all under one prefix (`llm-fallback` by default), one set per route
//! key (the model id, plus the endpoint's base URL without user info or
//! query):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `{prefix}:cool:{route}` | string, TTL | the route cools until the key expires (server clock); the value is the ejection count, or `restored` for a short while after a probe succeeded |
//! | `{prefix}:probe:{route}` | string, TTL | the fleet's one half-open probe: the replica holding it (`SET NX PX`) |
//! | `{prefix}:fails:{route}` | integer, TTL | consecutive failures across the fleet |
//! | `{prefix}:rate:{route}` | hash `ok`/`fail`, TTL | the breaker's counts over its window |
//! | `{prefix}:routes` | set | the routes with a cooldown key (entries go when the key does) |
//!
//! The scripts name keys they build from the prefix, so the store wants a
//! plain (not cluster) Redis.
//!
//! Nothing else is stored: no API key, prompt, header or body.

use super::{Admission, Change, Cooldowns, HealthEvent, HealthStatus, HealthStore, StoreState};
use crate::redact::urls;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Route health shared by every process that names the same Redis and key
/// prefix: cooldowns (with `Retry-After`), consecutive failures, the
/// breaker's counts and the half-open probe.
///
/// - Other replicas see a cooldown within one `poll_interval` plus a round
///   trip (polling, 200 ms by default).
/// - A cooldown's end is the key's TTL on the Redis server: no host's wall
///   clock is compared with another's.
/// - A cooldown is only ever extended by a later one, never shortened (a
///   script compares TTLs on the server); only the route's probe ends it.
/// - One probe per fleet: a replica takes the route's probe lock
///   (`SET NX PX`, `probe_lock` long) before it lets a request probe.
/// - Redis down or slow: every replica goes on with its local health
///   (logged once, and the `llm_fallback_health_store_connected` gauge
///   drops to 0 with the `metrics` feature); sharing resumes by itself.
///
/// Its background task runs on the tokio runtime it is built in (or, built
/// outside one, on a thread of its own):
///
/// ```no_run
/// use llm_fallback::health::{Cooldowns, RedisHealth};
/// use llm_fallback::{Chain, FallbackLayer, Route};
/// use std::sync::Arc;
///
/// # async fn f() -> Result<(), llm_fallback::health::RedisHealthError> {
/// let health = RedisHealth::builder("redis://127.0.0.1:6379/0")
///     .key_prefix("my-gateway")
///     .cooldowns(Cooldowns::new().failures(3))
///     .build()?;
/// let layer = FallbackLayer::builder(Chain::new([Route::new("a/primary"), Route::new("b/secondary")]))
///     .health_store(Arc::new(health))
///     .layer();
/// # let _ = layer;
/// # Ok(()) }
/// ```
///
/// Clones share one store and one background task, which ends when the
/// last clone is dropped.
#[derive(Clone)]
pub struct RedisHealth {
    inner: Arc<Inner>,
}

struct Inner {
    local: Cooldowns,
    prefix: String,
    /// This instance's name on a probe lock it holds.
    replica: String,
    /// Every route asked about, with what this replica knows of the fleet.
    routes: Mutex<HashMap<String, Fleet>>,
    ops: mpsc::Sender<Op>,
    connected: AtomicBool,
    dropped: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Fleet {
    /// This replica holds the route's probe lock and has not used it.
    token: bool,
    /// A request found the cooldown over: take the lock at the next poll.
    wants_probe: bool,
    /// Successes not yet sent: counted here, sent at the next poll (or
    /// before a failure of the route), so a success wakes no task.
    pending_ok: u32,
}

/// A change queued for Redis.
#[derive(Debug)]
enum Op {
    Failed(String),
    Cooled {
        route: String,
        cool: Duration,
        ejections: u32,
    },
    Restored(String),
    ProbeReleased(String),
    /// Done with everything queued before it, and polled.
    Sync(tokio::sync::oneshot::Sender<bool>),
}

/// Builds a [`RedisHealth`] (see there).
pub struct RedisHealthBuilder {
    url: String,
    prefix: String,
    local: Cooldowns,
    poll_interval: Duration,
    probe_lock: Duration,
    timeout: Duration,
}

/// A [`RedisHealth`] that could not be built. Its message never repeats
/// the URL (it may carry a password).
#[derive(Debug)]
#[non_exhaustive]
pub struct RedisHealthError {
    kind: ErrorKind,
}

#[derive(Debug)]
enum ErrorKind {
    Url(String),
    Runtime(String),
}

impl fmt::Display for RedisHealthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Url(why) => write!(
                f,
                "invalid redis health store URL ({why}); expected redis://[user:password@]host:port/db"
            ),
            ErrorKind::Runtime(why) => write!(f, "the redis health store could not start its background task: {why}"),
        }
    }
}

impl std::error::Error for RedisHealthError {}

impl fmt::Debug for RedisHealthBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL: it may carry a password.
        f.debug_struct("RedisHealthBuilder")
            .field("prefix", &self.prefix)
            .field("local", &self.local)
            .field("poll_interval", &self.poll_interval)
            .field("probe_lock", &self.probe_lock)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisHealthBuilder {
    /// Key prefix shared by the fleet (default `llm-fallback`); replicas
    /// with different prefixes share nothing.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The rules (failures, backoff, `Retry-After` cap, breaker, open
    /// share), the same as the in-memory store's.
    pub fn cooldowns(mut self, cooldowns: Cooldowns) -> Self {
        self.local = cooldowns;
        self
    }

    /// How often Redis is read for the fleet's changes (default 200 ms,
    /// at least 10 ms): a cooldown reaches other replicas within about this.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d.max(Duration::from_millis(10));
        self
    }

    /// How long a replica holds a route's probe lock at most (default 30 s):
    /// a replica that dies mid-probe blocks the fleet's probe this long.
    pub fn probe_lock(mut self, d: Duration) -> Self {
        self.probe_lock = d.max(Duration::from_millis(10));
        self
    }

    /// How long a Redis command may take before Redis counts as down
    /// (default 500 ms). Requests never wait for it.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d.max(Duration::from_millis(1));
        self
    }

    /// Checks the URL and starts the background task (which connects, and
    /// reconnects, by itself: Redis need not be up yet).
    pub fn build(self) -> Result<RedisHealth, RedisHealthError> {
        let client = crate::redis_task::client(&self.url).map_err(|why| RedisHealthError {
            kind: ErrorKind::Url(why),
        })?;
        let config = crate::redis_task::manager_config(self.timeout, self.poll_interval);
        let (ops, rx) = mpsc::channel(4096);
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let replica = format!(
            "{}-{:x}-{}",
            std::process::id(),
            started,
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        );
        let inner = Arc::new(Inner {
            local: self.local,
            prefix: self.prefix,
            replica,
            routes: Mutex::new(HashMap::new()),
            ops,
            connected: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        let task = Task {
            inner: Arc::downgrade(&inner),
            client,
            config,
            con: None,
            poll_interval: self.poll_interval,
            probe_lock: self.probe_lock,
            timeout: self.timeout,
            down_logged: false,
            ever_connected: false,
        };
        crate::redis_task::spawn("llm-fallback-redis", task.run(rx)).map_err(|why| RedisHealthError {
            kind: ErrorKind::Runtime(why),
        })?;
        Ok(RedisHealth { inner })
    }
}

impl RedisHealth {
    /// A builder for the Redis at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisHealthBuilder {
        RedisHealthBuilder {
            url: url.into(),
            prefix: "llm-fallback".into(),
            local: Cooldowns::new(),
            poll_interval: Duration::from_millis(200),
            probe_lock: Duration::from_secs(30),
            timeout: Duration::from_millis(500),
        }
    }

    /// Whether the last exchange with Redis worked (else the store runs on
    /// local health alone).
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// The routes cooling at `now` as this replica sees them, with how long
    /// they have left.
    pub fn cooling(&self, now: Instant) -> Vec<(String, Duration)> {
        self.inner.local.cooling(now)
    }

    /// Sends every change queued so far and reads the fleet's now, rather
    /// than at the next poll; `true` when Redis answered. For tests and for
    /// a graceful shutdown; requests never need it.
    pub async fn sync(&self) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.inner.ops.send(Op::Sync(tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Changes dropped because the queue to Redis was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for RedisHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL: it may carry a password.
        f.debug_struct("RedisHealth")
            .field("prefix", &self.inner.prefix)
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

/// `key`'s entry, made when missing (the key copied only then). A full map
/// first forgets every route with nothing pending (no probe lock held or
/// wanted, no success to send); `None` when it is still full: the route
/// then keeps to local health, plus the cooldowns the poll finds in the
/// fleet's index.
fn fleet_slot<'m>(routes: &'m mut HashMap<String, Fleet>, key: &str) -> Option<&'m mut Fleet> {
    if routes.contains_key(key) {
        return routes.get_mut(key);
    }
    if routes.len() >= MAX_FLEET_ROUTES {
        routes.retain(|_, f| f.token || f.wants_probe || f.pending_ok > 0);
        if routes.len() >= MAX_FLEET_ROUTES {
            return None;
        }
    }
    Some(routes.entry(key.to_owned()).or_default())
}

/// The most routes a [`RedisHealth`] tracks for the fleet (and names to
/// Redis at each poll). Route keys also come from what callers choose
/// where the layer lets them (a model passed through, a caller's own
/// chain), so the map must not grow with them; real chains have tens.
const MAX_FLEET_ROUTES: usize = 4096;

impl Inner {
    fn fleet(&self) -> std::sync::MutexGuard<'_, HashMap<String, Fleet>> {
        // Each update is a few plain assignments: poison is ignored.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, op: Op) {
        if self.ops.try_send(op).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn set_connected(&self, yes: bool) {
        self.connected.store(yes, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::gauge!("llm_fallback_health_store_connected").set(if yes { 1.0 } else { 0.0 });
    }
}

impl HealthStore for RedisHealth {
    fn admit(&self, key: &str, now: Instant) -> Admission {
        let inner = &*self.inner;
        fleet_slot(&mut inner.fleet(), key);
        inner.local.admit_with(key, now, || {
            if !inner.connected.load(Ordering::Relaxed) {
                return true; // Redis down: the local probe rule
            }
            let mut routes = inner.fleet();
            // Not tracked (the map is full): the local probe rule.
            let Some(f) = routes.get_mut(key) else { return true };
            if std::mem::take(&mut f.token) {
                true
            } else {
                f.wants_probe = true;
                false
            }
        })
    }

    fn record(&self, key: &str, event: HealthEvent, now: Instant) {
        let inner = &*self.inner;
        let route = || key.to_owned();
        match inner.local.apply(key, event, now) {
            Change::None => {}
            Change::Failed => inner.send(Op::Failed(route())),
            Change::Succeeded => {
                if let Some(f) = fleet_slot(&mut inner.fleet(), key) {
                    f.pending_ok = f.pending_ok.saturating_add(1);
                }
            }
            Change::Cooled { cool, ejections } => inner.send(Op::Cooled {
                route: route(),
                cool,
                ejections,
            }),
            Change::Restored => inner.send(Op::Restored(route())),
            Change::ProbeReleased => inner.send(Op::ProbeReleased(route())),
        }
    }

    fn max_open_share(&self) -> f64 {
        HealthStore::max_open_share(&self.inner.local)
    }

    fn status(&self, now: Instant) -> HealthStatus {
        let state = if self.connected() {
            StoreState::Connected
        } else {
            StoreState::LocalOnly
        };
        HealthStatus::new(state, self.cooling(now))
    }
}

// ===== the background task =====

/// Sets a cooldown unless a longer one is already there (`restored` is
/// no cooldown); clears the consecutive count and a probe lock held by the
/// caller; lists the route in the index. KEYS: cool, fails, probe, index.
/// ARGV: ms, ejections, replica, route.
const COOL: &str = r"
redis.call('SADD', KEYS[4], ARGV[4])
local v = redis.call('GET', KEYS[1])
local t = redis.call('PTTL', KEYS[1])
local ms = tonumber(ARGV[1])
redis.call('DEL', KEYS[2])
if redis.call('GET', KEYS[3]) == ARGV[3] then redis.call('DEL', KEYS[3]) end
if v == 'restored' or t < ms then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ms)
  return ms
end
return t
";

/// Counts a failure. KEYS: fails, rate. ARGV: window ms.
/// Returns {consecutive, ok, failed} over the fleet.
const FAILED: &str = r"
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local f = redis.call('HINCRBY', KEYS[2], 'fail', 1)
if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
local ok = redis.call('HGET', KEYS[2], 'ok')
return {n, tonumber(ok or '0'), f}
";

/// Counts successes. KEYS: fails, rate. ARGV: window ms (0: no breaker),
/// how many.
const SUCCEEDED: &str = r"
redis.call('DEL', KEYS[1])
if ARGV[1] ~= '0' then
  redis.call('HINCRBY', KEYS[2], 'ok', ARGV[2])
  if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
end
return 1
";

/// The probe succeeded: the route is healthy for the whole fleet.
/// KEYS: cool, fails, rate, probe. ARGV: marker ms, replica.
const RESTORED: &str = r"
redis.call('SET', KEYS[1], 'restored', 'PX', ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
if redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
return 1
";

/// Releases a probe lock this replica holds. KEYS: probe. ARGV: replica.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Reads the cooldown and probe lock of every route known here (ARGV
/// after the prefix) or listed in the index (KEYS[1]); drops index entries
/// whose cooldown is gone. Returns, per route: its name, the PTTL of its
/// cool key, that key's value, the probe lock's holder.
const POLL: &str = r"
local seen, routes = {}, {}
for i = 2, #ARGV do
  if not seen[ARGV[i]] then seen[ARGV[i]] = true; routes[#routes + 1] = ARGV[i] end
end
for _, r in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not seen[r] then seen[r] = true; routes[#routes + 1] = r end
end
local out = {}
for _, r in ipairs(routes) do
  local ck = ARGV[1] .. ':cool:' .. r
  local t = redis.call('PTTL', ck)
  if t == -2 then redis.call('SREM', KEYS[1], r) end
  out[#out + 1] = r
  out[#out + 1] = tostring(t)
  out[#out + 1] = redis.call('GET', ck) or ''
  out[#out + 1] = redis.call('GET', ARGV[1] .. ':probe:' .. r) or ''
end
return out
";

struct Task {
    inner: Weak<Inner>,
    client: redis::Client,
    config: ConnectionManagerConfig,
    con: Option<ConnectionManager>,
    poll_interval: Duration,
    probe_lock: Duration,
    timeout: Duration,
    down_logged: bool,
    ever_connected: bool,
}

struct Scripts {
    cool: Script,
    failed: Script,
    succeeded: Script,
    restored: Script,
    release: Script,
    poll: Script,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let scripts = Scripts {
            cool: Script::new(COOL),
            failed: Script::new(FAILED),
            succeeded: Script::new(SUCCEEDED),
            restored: Script::new(RESTORED),
            release: Script::new(RELEASE),
            poll: Script::new(POLL),
        };
        let mut next = Instant::now();
        loop {
            match tokio::time::timeout_at(next, rx.recv()).await {
                Ok(None) => return, // the store was dropped
                Ok(Some(Op::Sync(reply))) => {
                    let Some(inner) = self.inner.upgrade() else { return };
                    let ok = self.tick(&inner, &scripts).await;
                    let _ = reply.send(ok);
                }
                Ok(Some(op)) => {
                    let Some(inner) = self.inner.upgrade() else { return };
                    // Everything queued now, in order.
                    let mut batch = vec![op];
                    while batch.len() < 256 {
                        match rx.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    for op in batch {
                        if let Op::Sync(reply) = op {
                            // Answered in order, like the other ops.
                            let done = self.poll(&inner, &scripts).await;
                            let ok = done.is_ok();
                            self.outcome(&inner, done);
                            let _ = reply.send(ok);
                        } else if inner.connected.load(Ordering::Relaxed) {
                            let done = self.apply(&inner, &scripts, op).await;
                            self.outcome(&inner, done);
                        }
                        // Down: the change stays local; the poll reconnects.
                    }
                    // Ops that keep coming (a failing route under load)
                    // must not put the poll off: `timeout_at` looks at the
                    // queue before the clock.
                    if Instant::now() >= next {
                        self.tick(&inner, &scripts).await;
                        next = Instant::now() + self.poll_interval;
                    }
                }
                Err(_) => {
                    let Some(inner) = self.inner.upgrade() else { return };
                    self.tick(&inner, &scripts).await;
                    next = Instant::now() + self.poll_interval;
                }
            }
        }
    }

    /// The poll, and after an outage the republish of what was learned
    /// meanwhile; whether the poll succeeded.
    async fn tick(&mut self, inner: &Inner, scripts: &Scripts) -> bool {
        let was = inner.connected.load(Ordering::Relaxed);
        let done = self.poll(inner, scripts).await;
        let ok = done.is_ok();
        self.outcome(inner, done);
        if !was && ok {
            // Back: tell the fleet what was learned meanwhile.
            let done = self.republish(inner, scripts).await;
            self.outcome(inner, done);
        }
        ok
    }

    /// Logs (once per outage) and flags a failed exchange, or a recovery.
    fn outcome(&mut self, inner: &Inner, done: Result<(), String>) {
        match done {
            Ok(()) => {
                if !inner.connected.load(Ordering::Relaxed) {
                    if self.ever_connected {
                        tracing::info!(prefix = %inner.prefix, "llm fallback health store: redis is back, sharing resumed");
                    }
                    self.ever_connected = true;
                    self.down_logged = false;
                    inner.set_connected(true);
                }
            }
            Err(why) => {
                #[cfg(feature = "metrics")]
                metrics::counter!("llm_fallback_health_store_errors_total").increment(1);
                if inner.connected.load(Ordering::Relaxed) || !self.down_logged {
                    tracing::warn!(
                        prefix = %inner.prefix,
                        error = %why,
                        "llm fallback health store: redis unreachable, going on with local health"
                    );
                    self.down_logged = true;
                }
                inner.set_connected(false);
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

    async fn bounded<T>(&self, fut: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{:?}", e.kind())),
            Err(_) => Err("timed out".into()),
        }
    }

    async fn apply(&mut self, inner: &Inner, s: &Scripts, op: Op) -> Result<(), String> {
        let mut con = self.con().await?;
        let window_ms = inner.local.breaker_config().map_or(0, |b| millis(b.window));
        let k = |kind: &str, route: &str| key(&inner.prefix, kind, route);
        match op {
            Op::Failed(route) => {
                self.flush_ok(inner, s, &mut con, &route).await?;
                // The consecutive count needs a window too: a day.
                let window = if window_ms == 0 { 86_400_000 } else { window_ms };
                let mut call = s.failed.key(k("fails", &route));
                call.key(k("rate", &route)).arg(window);
                let (consecutive, ok, failed): (u64, u64, u64) = self.bounded(call.invoke_async(&mut con)).await?;
                let counts = inner
                    .local
                    .fleet_counts(&route, consecutive, ok + failed, failed, Instant::now());
                if let Some((cool, ejections)) = counts {
                    self.cool(inner, s, &mut con, &route, cool, ejections).await?;
                }
            }
            Op::Cooled { route, cool, ejections } => {
                self.cool(inner, s, &mut con, &route, cool, ejections).await?;
            }
            Op::Restored(route) => {
                let mut call = s.restored.key(k("cool", &route));
                call.key(k("fails", &route))
                    .key(k("rate", &route))
                    .key(k("probe", &route))
                    .arg(millis(self.poll_interval.saturating_mul(5)))
                    .arg(&inner.replica);
                let _: i64 = self.bounded(call.invoke_async(&mut con)).await?;
            }
            Op::ProbeReleased(route) => {
                let mut call = s.release.key(k("probe", &route));
                call.arg(&inner.replica);
                let _: i64 = self.bounded(call.invoke_async(&mut con)).await?;
            }
            Op::Sync(_) => {} // answered by the loop
        }
        Ok(())
    }

    async fn succeeded(
        &self,
        inner: &Inner,
        s: &Scripts,
        con: &mut ConnectionManager,
        route: &str,
        n: u32,
    ) -> Result<(), String> {
        let window_ms = inner.local.breaker_config().map_or(0, |b| millis(b.window));
        let mut call = s.succeeded.key(key(&inner.prefix, "fails", route));
        call.key(key(&inner.prefix, "rate", route)).arg(window_ms).arg(n);
        let _: i64 = self.bounded(call.invoke_async(con)).await?;
        Ok(())
    }

    /// Sends the successes counted on `route` since the last time.
    async fn flush_ok(
        &self,
        inner: &Inner,
        s: &Scripts,
        con: &mut ConnectionManager,
        route: &str,
    ) -> Result<(), String> {
        let n = inner
            .fleet()
            .get_mut(route)
            .map_or(0, |f| std::mem::take(&mut f.pending_ok));
        if n > 0 {
            self.succeeded(inner, s, con, route, n).await?;
        }
        Ok(())
    }

    async fn cool(
        &self,
        inner: &Inner,
        s: &Scripts,
        con: &mut ConnectionManager,
        route: &str,
        cool: Duration,
        ejections: u32,
    ) -> Result<(), String> {
        let k = |kind: &str| key(&inner.prefix, kind, route);
        let mut call = s.cool.key(k("cool"));
        call.key(k("fails"))
            .key(k("probe"))
            .key(index(&inner.prefix))
            .arg(millis(cool).max(1))
            .arg(ejections)
            .arg(&inner.replica)
            .arg(&*urls(route));
        let _: i64 = self.bounded(call.invoke_async(con)).await?;
        Ok(())
    }

    /// Reads the fleet's cooldowns and probe locks into the local snapshot,
    /// and takes the probe locks local requests asked for.
    async fn poll(&mut self, inner: &Inner, s: &Scripts) -> Result<(), String> {
        let mut con = self.con().await?;
        // The Redis name of each route known here, back to its own key.
        let known: HashMap<String, String> = inner
            .fleet()
            .keys()
            .map(|k| (urls(k).into_owned(), k.clone()))
            .collect();
        let mut call = s.poll.key(index(&inner.prefix));
        call.arg(&inner.prefix);
        for name in known.keys() {
            call.arg(name);
        }
        let out: Vec<String> = self.bounded(call.invoke_async(&mut con)).await?;
        for name in known.values() {
            self.flush_ok(inner, s, &mut con, name).await?;
        }
        // TTLs count from about now (the reply), on the server's clock.
        let now = Instant::now();
        for row in out.chunks(4) {
            let [name, pttl, value, holder] = row else { continue };
            let route = known.get(name).unwrap_or(name);
            let pttl: i64 = pttl.parse().unwrap_or(-2);
            if value == "restored" {
                inner.local.restore(route);
            } else if pttl > 0 {
                let ejections = value.parse().unwrap_or(1);
                let until = now.checked_add(Duration::from_millis(pttl as u64)).unwrap_or(now);
                inner.local.adopt(route, until, ejections);
            }
            let fleet = {
                let mut routes = inner.fleet();
                // Only routes this replica asks about: the fleet's index
                // also names other replicas' (their callers' models too).
                let Some(f) = routes.get_mut(route) else { continue };
                if f.token && *holder != inner.replica {
                    // The lock expired unused: give it up.
                    f.token = false;
                }
                *f
            };
            if fleet.wants_probe && holder.is_empty() {
                let mut set = redis::cmd("SET");
                set.arg(key(&inner.prefix, "probe", route))
                    .arg(&inner.replica)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(self.probe_lock));
                let won = self
                    .bounded(set.query_async::<Option<String>>(&mut con))
                    .await?
                    .is_some();
                if let Some(f) = inner.fleet().get_mut(route) {
                    f.wants_probe = false;
                    f.token = won;
                }
            }
        }
        Ok(())
    }

    /// After an outage: the cooldowns this replica holds go to Redis (only
    /// ever extending what is there).
    async fn republish(&mut self, inner: &Inner, s: &Scripts) -> Result<(), String> {
        let mut con = self.con().await?;
        for (route, left) in inner.local.cooling(Instant::now()) {
            if !left.is_zero() {
                self.cool(inner, s, &mut con, &route, left, 1).await?;
            }
        }
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `{prefix}:{kind}:{route}`, with an endpoint's user info and query left
/// out of the route (they may hold a credential).
fn key(prefix: &str, kind: &str, route: &str) -> String {
    format!("{prefix}:{kind}:{}", urls(route))
}

/// `{prefix}:routes`: the routes that have a cooldown key, so a replica
/// learns of routes it has not asked about yet.
fn index(prefix: &str) -> String {
    format!("{prefix}:routes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_map_stays_bounded_whatever_the_keys() {
        // Keys callers choose (models passed through): the map forgets the
        // routes with nothing pending and keeps the others.
        let mut routes = HashMap::new();
        fleet_slot(&mut routes, "kept/probe").unwrap().token = true;
        fleet_slot(&mut routes, "kept/ok").unwrap().pending_ok = 2;
        for i in 0..100_000 {
            assert!(fleet_slot(&mut routes, &format!("caller/{i}")).is_some());
            assert!(routes.len() <= MAX_FLEET_ROUTES);
        }
        assert!(routes["kept/probe"].token);
        assert_eq!(routes["kept/ok"].pending_ok, 2);
        // Full of routes that all matter: a new one is not tracked.
        routes.clear();
        for i in 0..MAX_FLEET_ROUTES {
            fleet_slot(&mut routes, &format!("busy/{i}")).unwrap().wants_probe = true;
        }
        assert!(fleet_slot(&mut routes, "one/more").is_none());
        assert!(fleet_slot(&mut routes, "busy/7").is_some(), "a tracked route still is");
        assert_eq!(routes.len(), MAX_FLEET_ROUTES);
    }

    #[test]
    fn keys_are_namespaced_and_carry_no_credential() {
        assert_eq!(key("p", "cool", "openai/gpt-4o"), "p:cool:openai/gpt-4o");
        assert_eq!(
            key("p", "cool", "m@https://user:secret@api.example.com/v1?key=sk-1"),
            "p:cool:m@https://api.example.com/v1"
        );
        assert_eq!(key("p", "fails", "m@http://h:8080"), "p:fails:m@http://h:8080");
    }

    #[tokio::test]
    async fn a_bad_url_fails_at_build_without_quoting_it() {
        let e = RedisHealth::builder("http://user:hunter2@nowhere").build().unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("invalid redis health store URL"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        let builder = RedisHealth::builder("redis://:hunter2@127.0.0.1:1/0");
        assert!(!format!("{builder:?}").contains("hunter2"));
        let store = builder.build().unwrap();
        assert!(!format!("{store:?}").contains("hunter2"));
        assert!(RedisHealth::builder("not a url").build().is_err());
    }

    #[test]
    fn outside_a_runtime_it_runs_on_a_thread_of_its_own() {
        let h = RedisHealth::builder("redis://127.0.0.1:1/0").build().unwrap();
        assert!(!h.connected());
        assert_eq!(h.status(Instant::now()).store, StoreState::LocalOnly);
    }
}
