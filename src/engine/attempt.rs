//! What one attempt sends: the caller's body with the route's edits (zero
//! copy), and the caller's request head for the route's endpoint.

use crate::dialect::Dialect;
use crate::hop::Hop;
use crate::json::{BadEdits, Edit, ReplayBody};
use crate::request::{removals, MemberSpan, RequestIndex};
use crate::Attempt;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue, Request};

/// Anthropic's key header and API version header.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// Asks OpenRouter to report its own attempts in the body.
const X_OPENROUTER_METADATA: HeaderName = HeaderName::from_static("x-openrouter-metadata");

/// The caller's body for `route`: its model, its `provider` and `models`
/// when it sets them (replacing the caller's or inserted first), and without
/// the OpenRouter-only keys when its endpoint is not OpenRouter. Everything
/// else is the caller's bytes, shared, not copied.
pub(crate) fn attempt_body(body: &Bytes, index: &RequestIndex, hop: &Hop) -> Result<ReplayBody, BadEdits> {
    let mut edits = Edits::default();
    let mut insert = BytesMut::new();
    // OpenRouter takes `models` on every dialect but embeddings (where two
    // models' vectors would be mixed): the route's native fallbacks are not
    // sent there.
    let fallbacks = hop
        .fallbacks_json
        .as_ref()
        .filter(|_| index.dialect != Dialect::Embeddings);
    for (key, ours, theirs) in [
        ("provider", hop.provider_json.as_ref(), index.provider),
        ("models", fallbacks, index.models),
    ] {
        match (ours, theirs) {
            (Some(json), Some(span)) => edits.push(span.value_start..span.value_end, json.clone())?,
            (Some(json), None) => {
                insert.extend_from_slice(b"\"");
                insert.extend_from_slice(key.as_bytes());
                insert.extend_from_slice(b"\":");
                insert.extend_from_slice(json);
                insert.extend_from_slice(b",");
            }
            (None, _) => {}
        }
    }
    if !insert.is_empty() {
        let at = index.object_start + 1;
        edits.push(at..at, insert.freeze())?;
    }
    if body.get(index.model.clone()) != Some(&hop.model_json[..]) {
        edits.push(index.model.clone(), hop.model_json.clone())?;
    }
    let foreign = hop.route.endpoint.as_ref().is_some_and(|e| !e.openrouter);
    if foreign || (hop.drop_models && index.models.is_some()) {
        // Other APIs refuse OpenRouter's extensions; the route's own
        // `provider`/`models` are kept (setting them says the endpoint wants them).
        // A caller's own chain never sends its `models`: the layer runs it.
        let mut gone = [MemberSpan::default(); 4];
        let mut n = 0;
        for member in [
            index
                .provider
                .filter(|_| foreign && hop.provider_json.as_ref().is_none()),
            index.models.filter(|_| fallbacks.is_none()),
            index.route.filter(|_| foreign),
            index.transforms.filter(|_| foreign),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(slot) = gone.get_mut(n) {
                *slot = member;
                n += 1;
            }
        }
        let gone = gone.get_mut(..n).unwrap_or_default();
        gone.sort_unstable_by_key(|m| m.value_start);
        for range in removals(gone) {
            edits.push(range, Bytes::new())?;
        }
    }
    edits.apply(body)
}

/// The edits of one attempt's body, kept on the stack: at most the
/// `provider` and `models` replacements, one insertion, the model and four
/// removals.
#[derive(Default)]
struct Edits {
    list: [Edit; 8],
    len: usize,
}

impl Edits {
    fn push(&mut self, range: std::ops::Range<usize>, replacement: Bytes) -> Result<(), BadEdits> {
        let Some(slot) = self.list.get_mut(self.len) else {
            // Cannot happen (the bound above is exact); refuse rather than panic.
            return Err(BadEdits {
                range,
                after: self.len,
                len: 0,
            });
        };
        *slot = Edit { range, replacement };
        self.len += 1;
        Ok(())
    }

    fn apply(mut self, body: &Bytes) -> Result<ReplayBody, BadEdits> {
        let edits = self.list.get_mut(..self.len).unwrap_or_default();
        if edits.is_empty() {
            return Ok(ReplayBody::new(body.clone()));
        }
        edits.sort_unstable_by_key(|e| (e.range.start, e.range.end));
        ReplayBody::rewrite(body, edits)
    }
}

pub(super) fn attempt_request(
    parts: http::request::Parts,
    body: ReplayBody,
    attempt: Attempt,
    hop: &Hop,
    credential_headers: &[HeaderName],
    dialect: Dialect,
) -> Request<ReplayBody> {
    let len = body.len();
    let mut req = Request::from_parts(parts, body);
    if let Some(endpoint) = hop.route.endpoint.as_ref() {
        *req.uri_mut() = dialect.endpoint_uri(endpoint).clone();
        let headers = req.headers_mut();
        // A key or host meant for the caller's upstream never goes elsewhere.
        headers.remove(header::HOST);
        for name in credential_headers {
            // `remove` drops only the first value of a repeated header.
            while headers.remove(name).is_some() {}
        }
        if dialect == Dialect::Messages && endpoint.anthropic {
            // Anthropic's own API: its key header and version.
            if let Some(key) = &endpoint.api_key {
                headers.insert(X_API_KEY, key.clone());
            }
            if !headers.contains_key(ANTHROPIC_VERSION) {
                headers.insert(
                    ANTHROPIC_VERSION,
                    HeaderValue::from_static(crate::dialect::ANTHROPIC_VERSION),
                );
            }
        } else if let Some(auth) = &endpoint.authorization {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
    }
    if hop.route.openrouter_metadata {
        req.headers_mut()
            .insert(X_OPENROUTER_METADATA, HeaderValue::from_static("enabled"));
    }
    req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    req.extensions_mut().insert(attempt);
    req
}

/// `msg: source: source`, so "client error (Connect)" says what failed.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !text.contains(&msg) {
            text.push_str(": ");
            text.push_str(&msg);
        }
        source = s.source();
    }
    crate::inspect::truncate(text)
}
