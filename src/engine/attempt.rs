//! What one attempt sends: the caller's body with the route's edits (zero
//! copy), and the caller's request head for the route's endpoint.

use crate::dialect::Dialect;
use crate::hop::Hop;
use crate::json::scan;
use crate::json::{BadEdits, Edit, ReplayBody};
use crate::request::{removals, MemberSpan, RequestIndex};
use crate::Attempt;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue, Request};
use std::borrow::Cow;

/// Anthropic's key header and API version header.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// Asks OpenRouter to report its own attempts in the body.
const X_OPENROUTER_METADATA: HeaderName = HeaderName::from_static("x-openrouter-metadata");

/// The caller's body for `route`: its model, its `provider` and `models`
/// when it sets them (replacing the caller's or inserted first), and without
/// the OpenRouter-only keys when its endpoint is not OpenRouter. Everything
/// else is the caller's bytes, shared, not copied.
///
/// A route with overrides ([`Route::set`](crate::Route::set)) takes
/// [`with_overrides`], which does all of this and its own edits in one walk
/// over the top-level members.
pub(crate) fn attempt_body(body: &Bytes, index: &RequestIndex, hop: &Hop) -> Result<ReplayBody, BadEdits> {
    if !hop.overrides.is_empty() {
        return with_overrides(body, index, hop);
    }
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

/// [`attempt_body`] for a route with overrides: one walk over the body's
/// top-level members (which the index has validated) finds the keys to
/// replace or remove. The members the index knows (`messages`, `input`,
/// `tools`, ... : the prompt) are jumped over by their recorded spans, so
/// the walk reads only the small members' bytes, never the prompt's.
///
/// Every member named by an override is edited (a duplicated key in every
/// copy); a removed run of adjacent members goes with one comma, as
/// [`removals`] cuts them. The edits are the caller's bytes' spans and the
/// values encoded when the route was compiled: nothing is copied.
fn with_overrides(body: &Bytes, index: &RequestIndex, hop: &Hop) -> Result<ReplayBody, BadEdits> {
    let fallbacks = hop
        .fallbacks_json
        .as_ref()
        .filter(|_| index.dialect != Dialect::Embeddings);
    let foreign = hop.route.endpoint.as_ref().is_some_and(|e| !e.openrouter);
    let strip_models = fallbacks.is_none() && (foreign || hop.drop_models);
    let n = &index.needs;
    let span = |m: Option<MemberSpan>| m.map(|m| m.value_start..m.value_end);
    let known = [
        n.messages.clone(),
        n.input.clone(),
        n.system.clone(),
        n.tools.as_ref().map(|t| t.0.clone()),
        n.functions.as_ref().map(|t| t.0.clone()),
        n.text.clone(),
        n.response_format.clone(),
        n.tool_choice.clone(),
        n.thinking.as_ref().map(|t| t.0.clone()),
        Some(index.model.clone()),
        span(index.provider),
        span(index.models),
    ];
    let bad = |at: usize| BadEdits {
        range: at..at,
        after: at,
        len: body.len(),
    };
    let mut edits = EditList::default();
    // Which overrides (bit i: `hop.overrides[i]`) the body has; at most
    // `Overrides::MAX` = 64 of them.
    let mut found = 0u64;
    let (mut has_provider, mut has_models) = (false, false);
    // A run of removed members: the first one's key start and the end of
    // the value before it (if any), and the last one's value end.
    let mut run: Option<(usize, Option<usize>)> = None;
    let mut run_end = 0;
    let mut prev_value_end = None;
    let mut pos = skip_ws(body, index.object_start + 1);
    if body.get(pos) != Some(&b'}') {
        loop {
            let key_start = pos;
            if body.get(key_start) != Some(&b'"') {
                return Err(bad(key_start));
            }
            let (key_end, escaped) = skim_string(body, key_start).ok_or_else(|| bad(key_start))?;
            // The index checked every key; only an escaped one needs decoding.
            let key: Cow<'_, [u8]> = match escaped {
                false => Cow::Borrowed(body.get(key_start + 1..key_end - 1).ok_or_else(|| bad(key_start))?),
                true => body
                    .get(key_start..key_end)
                    .and_then(|literal| scan::decode_string(literal).ok())
                    .map(|k| Cow::Owned(k.into_owned().into_bytes()))
                    .ok_or_else(|| bad(key_start))?,
            };
            pos = skip_ws(body, key_end);
            if body.get(pos) != Some(&b':') {
                return Err(bad(pos));
            }
            let value_start = skip_ws(body, pos + 1);
            let value_end = match known.iter().flatten().find(|r| r.start == value_start) {
                Some(r) => r.end,
                None if body.get(value_start) == Some(&b'"') => {
                    skim_string(body, value_start).ok_or_else(|| bad(value_start))?.0
                }
                None => scan::scan_value(body, value_start).map_err(|_| bad(value_start))?.0,
            };
            let value = value_start..value_end;
            let remove = match &*key {
                b"model" => {
                    if body.get(value.clone()) != Some(&hop.model_json[..]) {
                        edits.push(Edit {
                            range: value,
                            replacement: hop.model_json.clone(),
                        });
                    }
                    false
                }
                b"provider" => {
                    has_provider = true;
                    match &hop.provider_json {
                        Some(json) => {
                            edits.push(Edit {
                                range: value,
                                replacement: json.clone(),
                            });
                            false
                        }
                        None => foreign,
                    }
                }
                b"models" => {
                    has_models = true;
                    match fallbacks {
                        Some(json) => {
                            edits.push(Edit {
                                range: value,
                                replacement: json.clone(),
                            });
                            false
                        }
                        None => strip_models,
                    }
                }
                b"route" | b"transforms" => foreign,
                key => match hop.overrides.iter().position(|o| *o.key == *key) {
                    Some(i) => {
                        found |= 1u64.checked_shl(i as u32).unwrap_or(0);
                        match hop.overrides.get(i).and_then(|o| o.value.as_ref()) {
                            Some(json) => {
                                edits.push(Edit {
                                    range: value,
                                    replacement: json.clone(),
                                });
                                false
                            }
                            None => true,
                        }
                    }
                    None => false,
                },
            };
            if remove {
                if run.is_none() {
                    run = Some((key_start, prev_value_end));
                }
                run_end = value_end;
            } else if let Some((first_key, before)) = run.take() {
                // After the value before the run, or up to this key.
                edits.push(Edit {
                    range: before.map_or(first_key..key_start, |end| end..run_end),
                    replacement: Bytes::new(),
                });
            }
            prev_value_end = Some(value_end);
            pos = skip_ws(body, value_end);
            match body.get(pos) {
                Some(b',') => pos = skip_ws(body, pos + 1),
                Some(b'}') => break,
                _ => return Err(bad(pos)),
            }
        }
    }
    if let Some((first_key, before)) = run.take() {
        edits.push(Edit {
            range: before.unwrap_or(first_key)..run_end,
            replacement: Bytes::new(),
        });
    }
    // What the body lacks goes in after its `{`, each member its own part.
    let at = index.object_start + 1;
    let mut insert = |member: &Bytes| {
        edits.push(Edit {
            range: at..at,
            replacement: member.clone(),
        })
    };
    for (i, o) in hop.overrides.iter().enumerate() {
        if found & 1u64.checked_shl(i as u32).unwrap_or(0) == 0 {
            if let Some(member) = &o.member {
                insert(member);
            }
        }
    }
    if let (Some(json), false) = (&hop.provider_json, has_provider) {
        insert(&member_bytes("provider", json));
    }
    if let (Some(json), false) = (fallbacks, has_models) {
        insert(&member_bytes("models", json));
    }
    let edits = edits.as_mut_slice();
    // Stable: insertions at `{` keep their order, before a removal there.
    edits.sort_by_key(|e| (e.range.start, e.range.end));
    ReplayBody::rewrite(body, edits)
}

/// Edits kept on the stack up to [`EditList::INLINE`] (the model, a few
/// overrides and strips), on the heap past it (a caller's key repeated
/// many times: each copy is edited).
// Large on purpose: it lives on the stack of one attempt's rewrite.
#[allow(clippy::large_enum_variant)]
enum EditList {
    Inline([Edit; EditList::INLINE], usize),
    Heap(Vec<Edit>),
}

impl EditList {
    const INLINE: usize = 12;

    fn push(&mut self, edit: Edit) {
        match self {
            EditList::Inline(list, len) => match list.get_mut(*len) {
                Some(slot) => {
                    *slot = edit;
                    *len += 1;
                }
                None => {
                    let mut heap: Vec<Edit> = list.iter_mut().map(std::mem::take).collect();
                    heap.push(edit);
                    *self = EditList::Heap(heap);
                }
            },
            EditList::Heap(list) => list.push(edit),
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Edit] {
        match self {
            EditList::Inline(list, len) => list.get_mut(..*len).unwrap_or_default(),
            EditList::Heap(list) => list,
        }
    }
}

impl Default for EditList {
    fn default() -> Self {
        EditList::Inline(Default::default(), 0)
    }
}

/// `"key":json,`
fn member_bytes(key: &str, json: &Bytes) -> Bytes {
    let mut m = BytesMut::with_capacity(key.len() + json.len() + 4);
    m.extend_from_slice(b"\"");
    m.extend_from_slice(key.as_bytes());
    m.extend_from_slice(b"\":");
    m.extend_from_slice(json);
    m.extend_from_slice(b",");
    m.freeze()
}

/// One past the closing quote of the string whose `"` is at `start`, and
/// whether it has escapes. For a body the index has validated.
fn skim_string(body: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut pos = start + 1;
    let mut escaped = false;
    loop {
        pos += memchr::memchr2(b'"', b'\\', body.get(pos..)?)?;
        match body.get(pos) {
            Some(b'"') => return Some((pos + 1, escaped)),
            _ => {
                escaped = true;
                pos += 2;
            }
        }
    }
}

fn skip_ws(body: &[u8], mut pos: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = body.get(pos) {
        pos += 1;
    }
    pos
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
