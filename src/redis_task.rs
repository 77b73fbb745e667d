//! What the Redis-backed stores ([`RedisHealth`](crate::health::RedisHealth),
//! [`RedisAffinity`](crate::affinity::RedisAffinity)) share: opening the
//! client without quoting its URL, the connection manager's settings, and
//! starting the background task on the runtime at hand or a thread of its own.

use redis::aio::ConnectionManagerConfig;
use std::future::Future;
use std::time::Duration;

/// The client for `url`, or what is wrong with it in words that never quote
/// it (it may carry a password).
pub(crate) fn client(url: &str) -> Result<redis::Client, String> {
    redis::Client::open(url).map_err(|e| match e.kind() {
        redis::ErrorKind::InvalidClientConfig => {
            "not a redis:// URL, or a feature it needs (TLS, unix sockets) is off".into()
        }
        _ => "it does not parse".into(),
    })
}

/// A connection manager that gives up on a command after `timeout`, tries
/// once more, and backs off at most `max_delay` between reconnects.
pub(crate) fn manager_config(timeout: Duration, max_delay: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(max_delay)
}

/// Runs `task` on the current tokio runtime, or — built outside one (a
/// config loaded before a runtime starts) — on a thread named `thread` with
/// a small runtime of its own. The error says why it could not start.
pub(crate) fn spawn(thread: &str, task: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn(task)),
        Err(_) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.kind().to_string())?;
            std::thread::Builder::new()
                .name(thread.into())
                .spawn(move || runtime.block_on(task))
                .map_err(|e| e.kind().to_string())?;
        }
    }
    Ok(())
}
