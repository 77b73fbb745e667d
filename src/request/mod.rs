//! Reading the caller's request once: the indexed top-level keys and the
//! reasons a body is refused before any attempt.

use crate::dialect::Dialect;
use crate::json::scan::skip_ws;
use crate::json::scan::{self, ScanFail, ValueKind};
use std::ops::Range;
use std::sync::Arc;

mod needs;

pub(crate) use needs::{detect_needs, MediaScan};

/// What the engine needs from a request body.
#[derive(Debug)]
pub(crate) struct RequestIndex {
    /// The API shape the body was read as.
    pub(crate) dialect: Dialect,
    /// Span of the `model` value, quotes included.
    pub(crate) model: Range<usize>,
    /// The caller's model, decoded.
    pub(crate) requested_model: String,
    /// `"stream": true`.
    pub(crate) stream: bool,
    /// Offset of the object's `{`.
    pub(crate) object_start: usize,
    /// The OpenRouter-only members, when present.
    pub(crate) provider: Option<MemberSpan>,
    pub(crate) models: Option<MemberSpan>,
    pub(crate) route: Option<MemberSpan>,
    pub(crate) transforms: Option<MemberSpan>,
    /// Span of a top-level string `user` value, quotes included (what a
    /// sticky session may be keyed by).
    pub(crate) user: Option<Range<usize>>,
    /// Spans the capability checks read.
    pub(crate) needs: NeedSpans,
    /// The members of the keys the index was asked to record (the routes'
    /// overrides), when it was asked.
    pub(crate) recorded: Option<Recorded>,
}

/// The top-level keys whose members the index records, so a route's
/// overrides are edited from their spans without a second walk over the
/// body: the keys every route of a [`ChainSet`](crate::ChainSet) overrides,
/// gathered once when the set is built.
#[derive(Debug, Default)]
pub(crate) struct RecordKeys {
    /// Unique, in the order first given.
    keys: Vec<Box<[u8]>>,
    /// Bit `n` set: some key is `n` bytes long (bit 63: 63 or longer), so
    /// most keys of a body are told apart by their length alone.
    lens: u64,
}

impl RecordKeys {
    /// The set of `keys` (repeats count once).
    pub(crate) fn new<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut set = RecordKeys::default();
        for key in keys {
            if set.slot(key).is_none() {
                set.lens |= len_bit(key.len());
                set.keys.push(key.into());
            }
        }
        set
    }

    /// No keys: the index records nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Position of `key` in the set.
    pub(crate) fn slot(&self, key: &[u8]) -> Option<usize> {
        if self.lens & len_bit(key.len()) == 0 {
            return None;
        }
        self.keys.iter().position(|k| **k == *key)
    }

    /// The key at `slot`.
    pub(crate) fn key(&self, slot: usize) -> Option<&[u8]> {
        self.keys.get(slot).map(|k| &**k)
    }
}

fn len_bit(len: usize) -> u64 {
    1u64 << len.min(63)
}

/// What the index recorded for [`RecordKeys`].
#[derive(Debug)]
pub(crate) struct Recorded {
    /// The keys it looked for: a key of the set with no member here is
    /// not in the body.
    pub(crate) keys: Arc<RecordKeys>,
    /// Each member with one of those keys (every copy of a repeated key),
    /// in the body's order: the first few in place (what a request carries
    /// without a heap allocation), the rest (a key repeated) beside.
    inline: [Entry; Recorded::INLINE],
    len: usize,
    spill: Vec<Entry>,
}

/// One recorded member: its key's slot in [`Recorded::keys`] and where it
/// sits, in offsets of 32 bits (a body of 4 GiB or more is not recorded),
/// so a few fit in the index.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    slot: u32,
    key_start: u32,
    value_start: u32,
    value_end: u32,
    /// 0: none, the first member (no value ends at 0).
    prev_value_end: u32,
}

impl Entry {
    /// Its [`MemberSpan`]; the next key's start (a removal at the start of
    /// the object needs it) is read from the few bytes after the value:
    /// whitespace, a comma, whitespace.
    fn span(&self, body: &[u8]) -> MemberSpan {
        let value_end = self.value_end as usize;
        let comma = skip_ws(body, value_end);
        let next_key_start = (body.get(comma) == Some(&b',')).then(|| skip_ws(body, comma + 1));
        MemberSpan {
            key_start: self.key_start as usize,
            value_start: self.value_start as usize,
            value_end,
            prev_value_end: (self.prev_value_end != 0).then_some(self.prev_value_end as usize),
            next_key_start,
        }
    }
}

impl Recorded {
    const INLINE: usize = 2;

    /// The members recorded, in the body's order: each key's slot in
    /// [`Recorded::keys`] and the member's value.
    pub(crate) fn values(&self) -> impl Iterator<Item = (usize, Range<usize>)> + '_ {
        self.inline
            .get(..self.len)
            .unwrap_or_default()
            .iter()
            .chain(&self.spill)
            .map(|e| (e.slot as usize, e.value_start as usize..e.value_end as usize))
    }

    /// [`Recorded::values`] with where each member sits among its
    /// neighbours (`body` is the body indexed).
    pub(crate) fn members<'a>(&'a self, body: &'a [u8]) -> impl Iterator<Item = (usize, MemberSpan)> + 'a {
        self.inline
            .get(..self.len)
            .unwrap_or_default()
            .iter()
            .chain(&self.spill)
            .map(move |e| (e.slot as usize, e.span(body)))
    }
}

/// How the index records members: not at all (a layer without overrides:
/// compiled away), or for a [`RecordKeys`].
trait Recorder {
    /// A top-level member, seen in order; `span` is only built for one
    /// that is recorded.
    fn member(&mut self, key: &[u8], span: impl FnOnce() -> MemberSpan);
    fn finish(self) -> Option<Recorded>;
}

struct NoRecord;

impl Recorder for NoRecord {
    #[inline(always)]
    fn member(&mut self, _: &[u8], _: impl FnOnce() -> MemberSpan) {}

    #[inline(always)]
    fn finish(self) -> Option<Recorded> {
        None
    }
}

struct Recording {
    /// [`RecordKeys::lens`], at hand.
    lens: u64,
    recorded: Recorded,
}

impl Recording {
    /// For a body shorter than 4 GiB (its offsets fit an [`Entry`]).
    fn new(keys: &Arc<RecordKeys>) -> Self {
        Recording {
            lens: keys.lens,
            recorded: Recorded {
                keys: keys.clone(),
                inline: Default::default(),
                len: 0,
                spill: Vec::new(),
            },
        }
    }

    #[cold]
    fn record(&mut self, key: &[u8], span: MemberSpan) {
        let Some(slot) = self.recorded.keys.slot(key) else {
            return;
        };
        // Lossless: the body is shorter than 4 GiB, and so is every offset.
        let entry = Entry {
            slot: slot as u32,
            key_start: span.key_start as u32,
            value_start: span.value_start as u32,
            value_end: span.value_end as u32,
            prev_value_end: span.prev_value_end.unwrap_or(0) as u32,
        };
        let r = &mut self.recorded;
        match r.inline.get_mut(r.len) {
            Some(free) => {
                *free = entry;
                r.len += 1;
            }
            None => r.spill.push(entry),
        }
    }
}

impl Recorder for Recording {
    #[inline(always)]
    fn member(&mut self, key: &[u8], span: impl FnOnce() -> MemberSpan) {
        if self.lens & len_bit(key.len()) != 0 {
            self.record(key, span());
        }
    }

    fn finish(self) -> Option<Recorded> {
        Some(self.recorded)
    }
}

/// Where the members that say what a request needs sit.
#[derive(Debug, Clone, Default)]
pub(crate) struct NeedSpans {
    pub(crate) messages: Option<Range<usize>>,
    pub(crate) tools: Option<(Range<usize>, ValueKind)>,
    pub(crate) functions: Option<(Range<usize>, ValueKind)>,
    pub(crate) tool_choice: Option<Range<usize>>,
    pub(crate) response_format: Option<Range<usize>>,
    pub(crate) max_tokens: Option<Range<usize>>,
    /// Media parts seen in `messages` (Responses: `input`), when the index
    /// was asked to look.
    pub(crate) media: Option<MediaScan>,
    /// Responses `input`, embeddings `input`, completions `prompt`: the
    /// prompt's bytes beside (or instead of) `messages`.
    pub(crate) input: Option<Range<usize>>,
    /// Responses `instructions`, Messages `system`.
    pub(crate) system: Option<Range<usize>>,
    /// Responses `text` (its `format`).
    pub(crate) text: Option<Range<usize>>,
    /// Messages `thinking`.
    pub(crate) thinking: Option<(Range<usize>, ValueKind)>,
    /// Responses `previous_response_id` or `conversation` is set.
    pub(crate) stateful: bool,
}

/// Where a top-level member sits among its neighbours, so it can be
/// replaced or cut out without leaving a stray comma.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MemberSpan {
    key_start: usize,
    pub(crate) value_start: usize,
    pub(crate) value_end: usize,
    /// End of the previous member's value.
    prev_value_end: Option<usize>,
    /// Start of the next member's key.
    next_key_start: Option<usize>,
}

/// Byte ranges that remove the members of `a` and of `b` (each sorted by
/// position, no member in both) from the object.
///
/// A run of adjacent members (a run may mix `a`'s and `b`'s) goes with the
/// comma before it, or — for a run at the start of the object — with the
/// comma after it, so what stays is valid JSON. Runs never overlap.
pub(crate) fn removals_merged<'a>(
    a: &'a [MemberSpan],
    b: impl Iterator<Item = MemberSpan> + 'a,
) -> impl Iterator<Item = Range<usize>> + 'a {
    let mut a = a.iter().copied().peekable();
    let mut b = b.peekable();
    let mut members = std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if y.value_start < x.value_start => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
    .peekable();
    std::iter::from_fn(move || {
        let first = members.next()?;
        let mut last = first;
        // Adjacent: the next member's previous value is this one's.
        while let Some(next) = members.next_if(|m| m.prev_value_end == Some(last.value_end)) {
            last = next;
        }
        Some(match (first.prev_value_end, last.next_key_start) {
            (Some(prev_end), _) => prev_end..last.value_end,
            (None, Some(next_key)) => first.key_start..next_key,
            (None, None) => first.key_start..last.value_end,
        })
    })
}

/// A request refused before any attempt, as an OpenAI-style error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRequest {
    pub(crate) code: &'static str,
    pub(crate) param: Option<&'static str>,
    pub(crate) message: String,
}

impl BadRequest {
    fn new(code: &'static str, param: Option<&'static str>, message: impl Into<String>) -> Self {
        BadRequest {
            code,
            param,
            message: message.into(),
        }
    }
}

/// Keys whose duplicates are refused: the engine reads or rewrites them, and
/// with two copies it cannot know which one the upstream would honour.
const SINGLE_KEYS: &[&str] = &["model", "models", "provider", "stream", "route", "transforms"];

/// OpenRouter-only keys the engine may rewrite or remove.
const OPENROUTER_KEYS: [&str; 4] = ["provider", "models", "route", "transforms"];

pub(crate) fn index_request(body: &[u8]) -> Result<RequestIndex, BadRequest> {
    index(body, false, Dialect::Chat, NoRecord)
}

/// [`index_request`], also reading the media parts of `messages` in the same
/// pass (for the capability checks).
pub(crate) fn index_request_with_media(body: &[u8]) -> Result<RequestIndex, BadRequest> {
    index(body, true, Dialect::Chat, NoRecord)
}

/// Indexes a request body of `dialect` (its own keys for needs), also
/// recording the members of `keys` (see [`RecordKeys`]; nothing when it
/// is empty) in the same pass.
#[inline]
pub(crate) fn index_recording(
    dialect: Dialect,
    body: &[u8],
    media: bool,
    keys: &Arc<RecordKeys>,
) -> Result<RequestIndex, BadRequest> {
    match keys.is_empty() || u32::try_from(body.len()).is_err() {
        true => index(body, media, dialect, NoRecord),
        false => index(body, media, dialect, Recording::new(keys)),
    }
}

/// The member whose strings the media scan reads.
fn media_key(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Responses => "input",
        _ => "messages",
    }
}

/// Records the members of `dialect` (other than chat's) that say what a
/// request needs.
fn dialect_member(dialect: Dialect, m: &scan::Member<'_>, needs: &mut NeedSpans) {
    let number = m.kind == ValueKind::Number;
    let set = !matches!(m.kind, ValueKind::Null);
    match (dialect, &*m.key) {
        (Dialect::Responses, b"input") | (Dialect::Embeddings, b"input") | (Dialect::Completions, b"prompt") => {
            needs.input = Some(m.value.clone())
        }
        (Dialect::Responses, b"instructions") | (Dialect::Messages, b"system") => needs.system = Some(m.value.clone()),
        (Dialect::Responses, b"text") => needs.text = Some(m.value.clone()),
        (Dialect::Responses, b"max_output_tokens") | (Dialect::Messages | Dialect::Completions, b"max_tokens")
            if number =>
        {
            needs.max_tokens = Some(m.value.clone())
        }
        (Dialect::Responses, b"previous_response_id" | b"conversation") if set => needs.stateful = true,
        (Dialect::Messages, b"messages") => needs.messages = Some(m.value.clone()),
        (Dialect::Messages, b"thinking") => needs.thinking = Some((m.value.clone(), m.kind)),
        _ => {}
    }
}

fn index(body: &[u8], media: bool, dialect: Dialect, mut record: impl Recorder) -> Result<RequestIndex, BadRequest> {
    let mut model: Option<(Range<usize>, ValueKind)> = None;
    let mut stream = None;
    let mut seen = [false; SINGLE_KEYS.len()];
    let mut openrouter: [Option<MemberSpan>; 4] = [None; 4];
    let mut prev_value_end = None;
    let mut last_recorded: Option<usize> = None;
    let mut needs = NeedSpans::default();
    let mut user = None;
    let mut media_scan = MediaScan::for_dialect(dialect);
    let mut on_string = |open: usize, end: usize| media_scan.on_string(body, open, end);
    let watch = match media {
        true => scan::Watch::Strings(media_key(dialect), &mut on_string),
        false => scan::Watch::Nothing,
    };
    let scanned = scan::scan_object_watching(body, watch, |m| {
        if let Some(k) = last_recorded.take() {
            if let Some(Some(span)) = openrouter.get_mut(k) {
                span.next_key_start = Some(m.key_span.start);
            }
        }
        record.member(&m.key, || MemberSpan {
            key_start: m.key_span.start,
            value_start: m.value.start,
            value_end: m.value.end,
            prev_value_end,
            next_key_start: None,
        });
        if let Some((k, slot)) = OPENROUTER_KEYS
            .iter()
            .position(|k| k.as_bytes() == &*m.key)
            .and_then(|k| Some((k, openrouter.get_mut(k)?)))
        {
            *slot = Some(MemberSpan {
                key_start: m.key_span.start,
                value_start: m.value.start,
                value_end: m.value.end,
                prev_value_end,
                next_key_start: None,
            });
            last_recorded = Some(k);
        }
        prev_value_end = Some(m.value.end);
        if let Some((key, seen)) = SINGLE_KEYS
            .iter()
            .position(|k| k.as_bytes() == &*m.key)
            .and_then(|i| Some((SINGLE_KEYS.get(i)?, seen.get_mut(i)?)))
        {
            if std::mem::replace(seen, true) {
                return Err(BadRequest::new(
                    "duplicate_key",
                    Some(key),
                    format!(
                        "the request body has more than one top-level {key:?} key; refusing to guess which one the upstream would use"
                    ),
                ));
            }
        }
        match &*m.key {
            b"model" => model = Some((m.value.clone(), m.kind)),
            b"stream" => stream = Some(m.kind == ValueKind::True),
            b"tools" => needs.tools = Some((m.value.clone(), m.kind)),
            b"tool_choice" => needs.tool_choice = Some(m.value.clone()),
            b"user" if m.kind == ValueKind::String => user = Some(m.value.clone()),
            _ if dialect != Dialect::Chat => dialect_member(dialect, &m, &mut needs),
            b"messages" => needs.messages = Some(m.value.clone()),
            b"functions" => needs.functions = Some((m.value.clone(), m.kind)),
            b"response_format" => needs.response_format = Some(m.value.clone()),
            b"max_tokens" | b"max_completion_tokens" if m.kind == ValueKind::Number => {
                needs.max_tokens = Some(m.value.clone())
            }
            _ => {}
        }
        Ok(())
    });
    let object_start = match scanned {
        Ok(span) => span.start,
        Err(ScanFail::Callback(bad)) => return Err(bad),
        Err(ScanFail::Scan(e)) => {
            return Err(BadRequest::new(
                "invalid_json",
                None,
                format!("the request body is not a valid JSON object: {e}"),
            ))
        }
    };
    let Some((span, kind)) = model else {
        return Err(BadRequest::new(
            "missing_model",
            Some("model"),
            "the request body has no top-level \"model\" field",
        ));
    };
    if kind != ValueKind::String {
        return Err(BadRequest::new(
            "invalid_model",
            Some("model"),
            format!(
                "the top-level \"model\" field must be a string, found {}",
                kind_name(kind)
            ),
        ));
    }
    let requested_model = scan::decode_string(body.get(span.clone()).unwrap_or_default())
        .map_err(|e| {
            BadRequest::new(
                "invalid_json",
                Some("model"),
                format!("the \"model\" string is invalid: {e}"),
            )
        })?
        .into_owned();
    let [provider, models, route, transforms] = openrouter;
    needs.media = media.then_some(media_scan);
    Ok(RequestIndex {
        dialect,
        model: span,
        requested_model,
        stream: stream.unwrap_or(false),
        object_start,
        provider,
        models,
        route,
        transforms,
        user,
        needs,
        recorded: record.finish(),
    })
}

fn kind_name(kind: ValueKind) -> &'static str {
    match kind {
        ValueKind::String => "a string",
        ValueKind::Number => "a number",
        ValueKind::Object => "an object",
        ValueKind::Array => "an array",
        ValueKind::True | ValueKind::False => "a boolean",
        ValueKind::Null => "null",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_model() {
        let body = br#"{"messages":[{"role":"user","content":"model"}],"model":"a/b","stream":true}"#;
        let idx = index_request(body).unwrap();
        assert_eq!(&body[idx.model.clone()], br#""a/b""#);
        assert_eq!(idx.requested_model, "a/b");
        assert!(idx.stream);
    }

    fn strip(body: &str, keys: &[&str]) -> String {
        let idx = index_request(body.as_bytes()).unwrap();
        let mut spans: Vec<MemberSpan> = [idx.provider, idx.models, idx.route, idx.transforms]
            .into_iter()
            .zip(OPENROUTER_KEYS)
            .filter(|(_, k)| keys.contains(k))
            .filter_map(|(s, _)| s)
            .collect();
        spans.sort_by_key(|s| s.value_start);
        let mut out = body.to_owned();
        for r in removals_merged(&spans, std::iter::empty())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            out.replace_range(r, "");
        }
        out
    }

    fn recording(body: &[u8], keys: &[&str]) -> RequestIndex {
        let keys = Arc::new(RecordKeys::new(keys.iter().map(|k| k.as_bytes())));
        index_recording(Dialect::Chat, body, false, &keys).unwrap()
    }

    #[test]
    fn records_every_copy_of_the_keys_asked_for_and_nothing_else() {
        // Escaped spellings are the same key; nested keys are not members.
        let body = br#"{"n":1, "model":"a","max_tokens":5,"messages":[{"n":2}],"max\u005ftokens" : 6 ,"seed":7}"#;
        let idx = recording(body, &["max_tokens", "n", "top_p"]);
        let rec = idx.recorded.as_ref().unwrap();
        let got: Vec<(&[u8], &[u8])> = rec
            .values()
            .map(|(slot, v)| (rec.keys.key(slot).unwrap(), &body[v]))
            .collect();
        assert_eq!(
            got,
            [(&b"n"[..], &b"1"[..]), (b"max_tokens", b"5"), (b"max_tokens", b"6")]
        );
        // Where each sits: the first has no value before it, and the next
        // key's start is found past the spaces and the comma.
        let spans: Vec<MemberSpan> = rec.members(body).map(|(_, m)| m).collect();
        assert_eq!(spans[0].prev_value_end, None);
        assert_eq!(spans[0].next_key_start, Some(8));
        assert_eq!(spans[2].prev_value_end, Some(spans[2].key_start - 1));
        // Nothing recorded without keys, nor by the plain index.
        assert!(recording(body, &[]).recorded.is_none());
        assert!(index_request(body).unwrap().recorded.is_none());
        // More copies than fit in place.
        let many = format!(
            r#"{{"model":"a",{}}}"#,
            (0..9).map(|i| format!(r#""n":{i}"#)).collect::<Vec<_>>().join(",")
        );
        let idx = recording(many.as_bytes(), &["n"]);
        let values: Vec<&[u8]> = idx
            .recorded
            .as_ref()
            .unwrap()
            .values()
            .map(|(_, v)| &many.as_bytes()[v])
            .collect();
        let want: Vec<String> = (0..9).map(|i| i.to_string()).collect();
        assert_eq!(values, want.iter().map(|s| s.as_bytes()).collect::<Vec<_>>());
    }

    #[test]
    fn recorded_and_known_members_are_cut_out_together() {
        // A recorded member beside OpenRouter's: one run, one comma.
        let cases = [
            (r#"{"seed":1,"provider":{},"model":"a"}"#, r#"{"model":"a"}"#),
            (
                r#"{"model":"a","provider":{}, "seed" : 1 ,"n":2}"#,
                r#"{"model":"a" ,"n":2}"#,
            ),
            (r#"{"seed":1,"model":"a","provider":{}}"#, r#"{"model":"a"}"#),
            (r#"{ "seed" : 1 , "provider" : {} , "model":"a"}"#, r#"{ "model":"a"}"#),
        ];
        for (input, expected) in cases {
            let body = input.as_bytes();
            let idx = recording(body, &["seed"]);
            let known = [idx.provider.unwrap()];
            let cut = idx.recorded.as_ref().unwrap().members(body).map(|(_, m)| m);
            let mut out = input.to_owned();
            for r in removals_merged(&known, cut).collect::<Vec<_>>().into_iter().rev() {
                out.replace_range(r, "");
            }
            assert_eq!(out, expected, "{input}");
        }
    }

    #[test]
    fn finds_a_top_level_string_user_only() {
        let body = br#"{"model":"a","messages":[{"user":"x"}],"user":"u-1"}"#;
        let idx = index_request(body).unwrap();
        assert_eq!(&body[idx.user.clone().unwrap()], br#""u-1""#);
        for body in [
            &br#"{"model":"a","user":7}"#[..],
            br#"{"model":"a","messages":[{"user":"x"}]}"#,
        ] {
            assert_eq!(index_request(body).unwrap().user, None);
        }
    }

    #[test]
    fn openrouter_members_are_cut_out_cleanly() {
        let all = ["provider", "models", "route", "transforms"];
        let cases = [
            (
                r#"{"model":"a","provider":{"order":["x"]},"n":1}"#,
                r#"{"model":"a","n":1}"#,
            ),
            (r#"{"provider":{},"model":"a"}"#, r#"{"model":"a"}"#),
            (r#"{"provider":{},"models":["b"],"model":"a"}"#, r#"{"model":"a"}"#),
            (r#"{"model":"a","provider":{},"models":["b"]}"#, r#"{"model":"a"}"#),
            (
                r#"{"route":"fallback","model":"a","provider":{},"x":[],"models":[]}"#,
                r#"{"model":"a","x":[]}"#,
            ),
            (
                "{ \"provider\" : {} ,\n \"model\": \"a\" , \"transforms\": [\"middle-out\"] }",
                "{ \"model\": \"a\" }",
            ),
        ];
        for (input, expected) in cases {
            let out = strip(input, &all);
            assert_eq!(out, expected, "{input}");
            serde_json::from_str::<serde_json::Value>(&out).unwrap();
        }
        assert_eq!(
            strip(r#"{"model":"a","models":["b"]}"#, &["provider"]),
            r#"{"model":"a","models":["b"]}"#
        );
    }

    #[test]
    fn refuses_what_it_cannot_rewrite_safely() {
        let cases: &[(&[u8], &str)] = &[
            (b"[1,2]", "invalid_json"),
            (b"", "invalid_json"),
            (br#"{"model":"a""#, "invalid_json"),
            (br#"{"messages":[]}"#, "missing_model"),
            (br#"{"model":42}"#, "invalid_model"),
            (br#"{"model":null}"#, "invalid_model"),
            (br#"{"model":"a","model":"b"}"#, "duplicate_key"),
            (br#"{"model":"a","mod\u0065l":"b"}"#, "duplicate_key"),
            (br#"{"model":"a","stream":true,"stream":false}"#, "duplicate_key"),
            (br#"{"model":"a","route":"fallback","route":"x"}"#, "duplicate_key"),
            (
                br#"{"transforms":[],"model":"a","transforms":["middle-out"]}"#,
                "duplicate_key",
            ),
            (br#"{"model":"a","transforms":[],"transforms":[]}"#, "duplicate_key"),
            (br#"{"model":"a"} x"#, "invalid_json"),
        ];
        for (body, code) in cases {
            let err = index_request(body).unwrap_err();
            assert_eq!(err.code, *code, "{}", String::from_utf8_lossy(body));
        }
    }
}
