//! What happens once per request, before any attempt: bound and buffer the
//! body, index its top-level keys, read what it needs, pick the chain, and
//! take the layer's own headers off the caller's request. A request that
//! cannot be served as it is gets its refusal here.

use super::answer::{reject, too_large};
use super::trip::Trip;
use super::{Shared, X_FALLBACK_CHAIN};
use crate::body::{collect_bounded, CollectError, ResponseBody};
use crate::capability::{Needs, PriceGuard};
use crate::chain::Picked;
use crate::dialect::Dialect;
use crate::policy::Policy;
use crate::report::{FallbackReport, Resolution};
use crate::request::{BadRequest, RequestIndex};
use crate::{BoxError, Chain, ChainName};
use bytes::Bytes;
use http::{header, HeaderName, Request, Response, StatusCode};
use http_body::Body;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A request ready for its attempts.
pub(super) struct Prepared<'s> {
    /// The caller's head, without framing headers and the layer's own.
    pub(super) parts: http::request::Parts,
    pub(super) body: Bytes,
    pub(super) index: &'s RequestIndex,
    pub(super) report: FallbackReport,
    /// Read only when some route declares limits or a chain is picked by them.
    pub(super) needs: Option<Needs>,
    pub(super) chain_name: &'s Arc<str>,
    pub(super) chain: &'s Chain,
    pub(super) deadline: Option<Instant>,
    pub(super) guard: Option<PriceGuard>,
    pub(super) drill: bool,
    /// The request's API shape.
    pub(super) dialect: Dialect,
    /// The hash of the request's session, when sticky sessions are on and
    /// it names one.
    pub(super) session: Option<u64>,
}

/// The caller's headers an attempt never carries: framing (each attempt
/// gets its own `Content-Length`; a stale length or chunked framing must not
/// reach the upstream), then the layer's own two.
const STRIPPED: [HeaderName; 5] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::EXPECT,
    X_FALLBACK_CHAIN,
    crate::health::X_FALLBACK_DRILL,
];
const FRAMING: usize = 3;
const CHAIN: usize = 3;
const DRILL: usize = 4;

/// Which of [`STRIPPED`] the request has, found in one pass over its names
/// (a request has a few): a `remove` of an absent name still hashes it.
fn present(headers: &http::HeaderMap) -> [bool; 5] {
    let mut present = [false; 5];
    for name in headers.keys() {
        if let Some((_, present)) = STRIPPED.iter().zip(present.iter_mut()).find(|(s, _)| *s == name) {
            *present = true;
        }
    }
    present
}

/// A request's head and its whole body, read within the layer's limit.
pub(super) struct Buffered {
    parts: http::request::Parts,
    body: Bytes,
    dialect: Dialect,
}

/// Reads `req`'s body whole (the asynchronous part of preparing it), or
/// answers it with its refusal (`400`/`413`). The rest is [`prepare`]'s,
/// a plain function, so the large [`Prepared`] is built where the engine
/// keeps it instead of in this future's state and then moved out of it.
pub(super) async fn buffer<P, B, RB>(
    shared: &Shared<P>,
    req: Request<B>,
    started: Instant,
) -> Result<Buffered, Response<ResponseBody<RB>>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    // The caller's word wins over the path.
    let dialect = match parts.extensions.get::<Dialect>() {
        Some(d) => *d,
        None => Dialect::from_path(parts.uri.path()),
    };
    if dialect != Dialect::Chat {
        // Chat's name is the span's default.
        tracing::Span::current().record("gen_ai.operation.name", dialect.operation_name());
    }

    // Bound before buffering: a declared length over the limit is refused
    // without reading a byte.
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > shared.max_body_bytes as u64) {
        return Err(too_large(dialect, shared.max_body_bytes, started));
    }
    let body = std::pin::pin!(body);
    let mut body = body;
    let body = match collect_bounded(&mut body, shared.max_body_bytes).await {
        Ok(b) => b,
        Err(CollectError::TooLarge { .. }) => return Err(too_large(dialect, shared.max_body_bytes, started)),
        Err(CollectError::Body(e)) => {
            let e: BoxError = e.into();
            return Err(reject(
                dialect,
                StatusCode::BAD_REQUEST,
                &BadRequest {
                    code: "unreadable_body",
                    param: None,
                    message: format!("the request body could not be read: {e}"),
                },
                started,
            ));
        }
    };
    Ok(Buffered { parts, body, dialect })
}

/// Prepares a buffered request and its trip, or answers it with its
/// refusal (`400`).
///
/// `run` keeps what the trip borrows and the trip itself where they stay,
/// and they are put there once: the request's index (~650 B) into
/// `index`, a chain made for this request (pass-through or the caller's
/// own) into `own`, and the trip, built at the end, into `slot`. Returned
/// and moved instead, each would be copied two or three times on its way.
// Inlined into `run`, which returns a refusal as it is: a box would cost
// an allocation for nothing.
#[allow(clippy::result_large_err)]
#[inline(always)]
pub(super) fn prepare<'s, 't, S: Clone, P: Policy, RB>(
    shared: &'s Shared<P>,
    buffered: Buffered,
    started: Instant,
    svc: S,
    index: &'s mut Option<RequestIndex>,
    own: &'s mut Option<(Arc<str>, Chain)>,
    slot: &'t mut Option<Trip<'s, S, P>>,
) -> Result<&'t mut Trip<'s, S, P>, Response<ResponseBody<RB>>> {
    let Buffered {
        mut parts,
        body,
        dialect,
    } = buffered;
    // Media parts are counted only when something reads needs.
    let index = match dialect.index(&body, shared.reads_needs, shared.chains.record_keys()) {
        Ok(i) => index.insert(i),
        Err(bad) => return Err(reject(dialect, StatusCode::BAD_REQUEST, &bad, started)),
    };
    let current = tracing::Span::current();
    if !current.is_disabled() {
        current.record("gen_ai.request.model", index.requested_model.as_str());
    }

    // Each attempt gets its own Content-Length; a stale length or chunked
    // framing from the caller must not reach the upstream.
    let present = present(&parts.headers);
    for (name, here) in STRIPPED.iter().zip(present).take(FRAMING) {
        if here {
            parts.headers.remove(name);
        }
    }

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
    let index: &'s RequestIndex = index;
    // Needs are only read when some route declares limits or some chain
    // is picked by them, and for every dialect but chat (a route's endpoint
    // may not serve it; a stateful request stays on its upstream).
    let needs = (shared.reads_needs || dialect != Dialect::Chat).then(|| dialect.needs(&body, index));
    // Removed always; read only when the layer allows callers to pick.
    let header_choice = present[CHAIN]
        .then(|| parts.headers.remove(X_FALLBACK_CHAIN))
        .flatten()
        .filter(|_| shared.allow_chain_header);
    let explicit = match (parts.extensions.get::<ChainName>(), &header_choice) {
        (Some(ChainName(name)), _) => Some(name.as_str()),
        (None, Some(v)) => Some(v.to_str().unwrap_or("\u{fffd}")),
        (None, None) => None,
    };
    let requested = report.requested_model.as_deref().unwrap_or_default();
    let model_json = body.get(index.model.clone()).unwrap_or_default();
    let models_json = index.models.and_then(|m| body.get(m.value_start..m.value_end));
    let (chain_name, chain, made) =
        match shared
            .chains
            .pick(explicit, requested, model_json, models_json, needs.as_ref())
        {
            Ok(Picked::Set(name, chain)) => (name, chain, false),
            Ok(Picked::Own(name, chain)) => {
                let (name, chain) = &*own.insert((name, chain));
                (name, chain, true)
            }
            Err(bad) => return Err(reject(dialect, StatusCode::BAD_REQUEST, &bad, started)),
        };
    report.chain = Some(chain_name.clone());
    let chain_deadline = chain.deadline;
    let chain_guard = chain.price_guard;
    // A deadline too far to be an instant is no deadline.
    let deadline = chain_deadline.and_then(|d| started.checked_add(d));
    let guard = parts.extensions.get::<PriceGuard>().copied().or(chain_guard);
    // The drill header is never forwarded, whether drills are on or not.
    let drill = match &shared.drills {
        Some(d) => d.pick(&mut parts.headers),
        None => {
            if present[DRILL] {
                parts.headers.remove(crate::health::X_FALLBACK_DRILL);
            }
            false
        }
    };
    // A request passed through has no fallback to drill.
    let passed_through = made && &**chain_name == crate::ChainSet::PASS_THROUGH;
    let drill = drill && !passed_through;
    report.drill = drill;
    // A session is only read (a header looked up, a prompt hashed) when
    // the request may reach deployments to pin.
    let pins_something = || chain.balances() || shared.chains.content_policy_chain().is_some_and(|(_, c)| c.balances());
    let session = shared
        .affinity
        .as_ref()
        .filter(|_| pins_something())
        .and_then(|a| a.session(&parts.headers, &body, index));
    let prepared = Prepared {
        parts,
        body,
        index,
        report,
        needs,
        chain_name,
        chain,
        deadline,
        guard,
        drill,
        dialect,
        session,
    };
    Ok(slot.insert(Trip::new(shared, prepared, svc, started)))
}
