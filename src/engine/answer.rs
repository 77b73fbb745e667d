//! What the caller gets back: the served or stopped upstream response with
//! the report, a refusal of the request, or the one exhaustion answer.

use super::flights::{Answer, Looked};
use super::{X_FALLBACK_ATTEMPTS, X_FALLBACK_DEPLOYMENT, X_FALLBACK_LABEL, X_FALLBACK_MODEL};
use crate::body::ResponseBody;
use crate::dialect::{Dialect, ErrorBody};
use crate::hop::Hop;
use crate::json::BadEdits;
use crate::report::{Exhausted, ExhaustionBody, FallbackReport, Resolution};
use crate::request::BadRequest;
use crate::stream::CommittedStream;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// Sets the report's headers and extension. `route` is the one that
/// served: its prebuilt header values are used when they say the same.
pub(super) fn finish<B>(resp: &mut Response<B>, mut report: FallbackReport, started: Instant, hop: Option<&Hop>) {
    report.elapsed = started.elapsed();
    let headers = resp.headers_mut();
    // Which of ours the answer already has (an upstream may set them): one
    // pass over its few names, so a header it lacks is not looked up (a
    // hash of the name) only to be found absent.
    let (mut has_model, mut has_label) = (false, false);
    for name in headers.keys() {
        has_model |= *name == X_FALLBACK_MODEL;
        has_label |= *name == X_FALLBACK_LABEL;
    }
    let model = hop.and_then(|r| Some((&*r.model, r.model_header.as_ref()?)));
    set_header(headers, X_FALLBACK_MODEL, report.served_model(), model, has_model);
    let label = hop.and_then(|r| Some((r.label.as_deref()?, r.label_header.as_ref()?)));
    set_header(
        headers,
        X_FALLBACK_LABEL,
        report.served_label().unwrap_or(""),
        label,
        has_label,
    );
    // Only routes with deployments say one; others leave the header as it was.
    if let Some(served) = report.served_deployment() {
        let prebuilt = hop.and_then(|r| Some((r.deployment.as_deref()?, r.deployment_header.as_ref()?)));
        set_header(headers, X_FALLBACK_DEPLOYMENT, served, prebuilt, true);
    }
    let sent = report.attempts.iter().filter(|a| a.outcome.was_sent()).count();
    let sent = crate::report::digit(sent).map_or_else(|| HeaderValue::from(sent), HeaderValue::from_static);
    headers.insert(X_FALLBACK_ATTEMPTS, sent);
    resp.extensions_mut().insert(report);
}

/// Sets `name` to `value`, or removes it when `value` is empty or not a
/// header value (`present`: the map may have it). `prebuilt` is some text
/// already made a header value, used when it is `value`.
fn set_header(
    headers: &mut HeaderMap,
    name: HeaderName,
    value: &str,
    prebuilt: Option<(&str, &HeaderValue)>,
    present: bool,
) {
    let v = match prebuilt {
        Some((text, v)) if text == value => Some(v.clone()),
        _ => crate::hop::header_value(value),
    };
    match v {
        Some(v) => {
            headers.insert(name, v);
        }
        None if present => {
            headers.remove(name);
        }
        None => {}
    }
}

/// An error answer in `dialect`'s shape.
fn error_response<B>(
    dialect: Dialect,
    status: StatusCode,
    error: ErrorBody<'_>,
    metadata: Option<serde_json::Value>,
) -> Response<ResponseBody<B>> {
    let bytes = dialect.error_body(error, metadata);
    let mut resp = Response::new(ResponseBody::full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub(super) fn reject<B>(
    dialect: Dialect,
    status: StatusCode,
    bad: &BadRequest,
    started: Instant,
) -> Response<ResponseBody<B>> {
    tracing::debug!(code = bad.code, "llm fallback rejected the request");
    let error = ErrorBody {
        kind: "invalid_request_error",
        code: bad.code,
        param: bad.param,
        message: &bad.message,
    };
    let mut resp = error_response(dialect, status, error, None);
    finish(&mut resp, FallbackReport::rejected(Duration::ZERO), started, None);
    resp
}

/// A bug of the crate met while building an attempt: a `500` in OpenAI
/// error JSON, with nothing sent for the attempt.
pub(super) fn internal_error<B>(dialect: Dialect, bad: &BadEdits, started: Instant) -> Response<ResponseBody<B>> {
    tracing::error!(error = %bad, "llm fallback could not build an attempt's body (a bug; please report it)");
    let message = format!("the fallback layer could not build the request for an attempt: {bad}");
    let error = ErrorBody {
        kind: "internal_error",
        code: "fallback_internal_error",
        param: None,
        message: &message,
    };
    let mut resp = error_response(dialect, StatusCode::INTERNAL_SERVER_ERROR, error, None);
    finish(&mut resp, FallbackReport::rejected(Duration::ZERO), started, None);
    resp
}

pub(super) fn too_large<B>(dialect: Dialect, limit: usize, started: Instant) -> Response<ResponseBody<B>> {
    reject(
        dialect,
        StatusCode::PAYLOAD_TOO_LARGE,
        &BadRequest {
            code: "request_too_large",
            param: None,
            message: format!("the request body is larger than the fallback layer's limit of {limit} bytes"),
        },
        started,
    )
}

/// The one answer a caller gets when no route served: `502` (or `504` when
/// the deadline ended the chain) with every attempt named, whatever the last
/// failure was.
pub(super) fn exhausted<B>(
    dialect: Dialect,
    mut report: FallbackReport,
    body: ExhaustionBody,
    started: Instant,
) -> Response<ResponseBody<B>> {
    if !report.attempts.iter().any(|a| a.outcome.was_sent()) && !report.attempts.is_empty() {
        // Nothing was sent: no route can serve this request as it is.
        let reasons: Vec<String> = report.attempts.iter().map(ToString::to_string).collect();
        let bad = BadRequest {
            code: "no_route_fits",
            param: None,
            message: format!("no route of the chain can serve this request: {}", reasons.join("; ")),
        };
        let mut resp = reject(dialect, StatusCode::BAD_REQUEST, &bad, started);
        report.resolution = Resolution::Rejected;
        report.elapsed = started.elapsed();
        resp.extensions_mut().insert(report);
        return resp;
    }
    report.elapsed = started.elapsed();
    let exhausted = Exhausted::new(report);
    tracing::warn!(error = %exhausted, "llm fallback chain exhausted");
    let attempts: Vec<_> = exhausted
        .report()
        .attempts()
        .iter()
        .map(|a| {
            let e = a.upstream_error();
            let mut entry = if body == ExhaustionBody::Summary {
                json!({
                    "model": a.model(),
                    "label": a.label(),
                    "chain": a.chain(),
                    "outcome": a.outcome().as_str(),
                    "status": a.status().map(|s| s.as_u16()),
                    "error_type": a.error_type().and_then(crate::report::plain_identifier),
                    "skip_reason": a.skip_reason().map(ToString::to_string),
                    "elapsed_ms": a.elapsed().as_millis() as u64,
                })
            } else {
                json!({
                "model": a.model(),
                "label": a.label(),
                "chain": a.chain(),
                "outcome": a.outcome().as_str(),
                "status": a.status().map(|s| s.as_u16()),
                "error_type": a.error_type(),
                "message": e.and_then(|e| e.message()).or(a.transport_error()),
                "provider_name": e.and_then(|e| e.provider_name()),
                "raw": e.and_then(|e| e.raw()),
                "skip_reason": a.skip_reason().map(ToString::to_string),
                "elapsed_ms": a.elapsed().as_millis() as u64,
                })
            };
            // Named only for routes with deployments or several keys (a
            // key by its variable, never its value).
            if let Some(obj) = entry.as_object_mut() {
                if let Some(d) = a.deployment() {
                    obj.insert("deployment".into(), d.into());
                }
                if let Some(k) = a.key_name() {
                    obj.insert("key".into(), k.into());
                }
            }
            entry
        })
        .collect();
    let deadline = exhausted.report().resolution() == Resolution::DeadlineExceeded;
    let message = match body {
        ExhaustionBody::Summary => exhausted.summary(),
        _ => exhausted.to_string(),
    };
    let error = ErrorBody {
        kind: "upstream_error",
        code: if deadline {
            "fallback_deadline_exceeded"
        } else {
            "fallback_exhausted"
        },
        param: None,
        message: &message,
    };
    let status = dialect.exhaustion_status(deadline);
    let mut resp = error_response(dialect, status, error, Some(json!({ "attempts": attempts })));
    if let Some(after) = exhausted.retry_after() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
    }
    let report = exhausted.report().clone();
    finish(&mut resp, report, started, None);
    resp
}

/// The response of the attempt that answered (served, or stopped on), with
/// the report: a buffered body as read, a larger one passed on, or a
/// committed stream that ends with an error chunk if it breaks. The answer
/// is taken from where it lies (its flight's box) piece by piece, rather
/// than moved whole (~0.4 KB) to get here.
pub(super) fn served<RB>(
    answer: &mut Answer<RB>,
    mut report: FallbackReport,
    hop: &Hop,
    span: &tracing::Span,
    started: Instant,
) -> Response<ResponseBody<RB>>
where
    RB: http_body::Body<Data = Bytes> + Unpin,
    RB::Error: Into<crate::BoxError>,
{
    let facts = &mut answer.facts;
    report.served_model = Some(facts.model.take().unwrap_or_else(|| hop.model.clone()));
    report.provider = facts.provider.take();
    report.usage = facts.usage.take();
    if !span.is_disabled() {
        span.record("gen_ai.response.model", report.served_model());
    }
    let mut parts = std::mem::replace(&mut answer.parts, Response::new(()).into_parts().0);
    let (body, handle) = match std::mem::replace(&mut answer.body, Looked::Full(Bytes::new())) {
        Looked::Full(b) => (ResponseBody::full(b), None),
        Looked::Overflow(head, rb) => (ResponseBody::inner(Some(head), rb), None),
        Looked::Committed(held, rb, tracker) => {
            // An error chunk may be appended if the stream breaks.
            parts.headers.remove(header::CONTENT_LENGTH);
            report.elapsed = started.elapsed();
            let (body, handle) =
                CommittedStream::new(held, rb, tracker, hop.route.idle_timeout, report.clone(), started);
            (ResponseBody::stream(body), Some(handle))
        }
    };
    let mut resp = Response::from_parts(parts, body);
    finish(&mut resp, report, started, Some(hop));
    if let Some(handle) = handle {
        resp.extensions_mut().insert(handle);
    }
    resp
}
