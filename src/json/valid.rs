//! Whether bytes are one JSON value as serde_json reads it: the check a
//! stream event gets before commit, without building anything.
//!
//! It accepts exactly what `serde_json::from_str::<IgnoredAny>` accepts
//! after `std::str::from_utf8` (RFC 8259's grammar; whitespace is space,
//! tab, CR and LF; no control byte below 0x20 inside a string; escapes
//! `\" \\ \/ \b \f \n \r \t` and `\u` with four hex digits, surrogates
//! unpaired or not; any depth), tested against serde_json itself below. It
//! reads strings eight bytes at a time, checks UTF-8 only when a string
//! has a byte past ASCII, and allocates only past 128 levels of nesting.

/// `input` is UTF-8 and one JSON value, with whitespace around it only.
pub(crate) fn valid(input: &[u8]) -> bool {
    // Bytes past ASCII can only be inside strings (anywhere else the
    // grammar refuses them): UTF-8 is checked only when a string had one.
    let mut high = false;
    value_run(input, &mut high).is_some() && (!high || std::str::from_utf8(input).is_ok())
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
const LOW7: u64 = u64::from_ne_bytes([0x7f; 8]);

/// The open arrays and objects, innermost last (1 = object): 128 levels in
/// a word, more on the heap.
struct Stack {
    bits: u128,
    depth: usize,
    spilled: Vec<u128>,
}

impl Stack {
    fn push(&mut self, object: bool) {
        if self.depth > 0 && self.depth % 128 == 0 {
            self.spilled.push(self.bits);
            self.bits = 0;
        }
        self.bits = (self.bits << 1) | u128::from(object);
        self.depth += 1;
    }

    /// The innermost open value is an object (`None`: none is open).
    fn top(&self) -> Option<bool> {
        (self.depth > 0).then_some(self.bits & 1 == 1)
    }

    fn pop(&mut self) {
        self.bits >>= 1;
        self.depth -= 1;
        if self.depth > 0 && self.depth % 128 == 0 {
            self.bits = self.spilled.pop().unwrap_or_default();
        }
    }
}

#[inline]
fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The whole input is one value; `None` when it is not. `high`: a string
/// (or the bytes read with it) had a byte past ASCII.
fn value_run(b: &[u8], high: &mut bool) -> Option<()> {
    let mut stack = Stack {
        bits: 0,
        depth: 0,
        spilled: Vec::new(),
    };
    let mut i = ws(b, 0);
    'value: loop {
        // A value starts at `i` (whitespace skipped).
        match *b.get(i)? {
            b'{' => {
                i = ws(b, i + 1);
                if b.get(i) == Some(&b'}') {
                    i += 1;
                } else {
                    stack.push(true);
                    i = key(b, i, high)?;
                    continue 'value;
                }
            }
            b'[' => {
                i = ws(b, i + 1);
                if b.get(i) == Some(&b']') {
                    i += 1;
                } else {
                    stack.push(false);
                    continue 'value;
                }
            }
            b'"' => i = string(b, i, high)?,
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            b'-' | b'0'..=b'9' => i = number(b, i)?,
            _ => return None,
        }
        // After a value: a comma, or the end of what holds it.
        loop {
            i = ws(b, i);
            match (stack.top(), b.get(i)) {
                (None, _) => return (i == b.len()).then_some(()),
                (Some(true), Some(b',')) => {
                    i = key(b, ws(b, i + 1), high)?;
                    continue 'value;
                }
                (Some(false), Some(b',')) => {
                    i = ws(b, i + 1);
                    continue 'value;
                }
                (Some(true), Some(b'}')) | (Some(false), Some(b']')) => {
                    stack.pop();
                    i += 1;
                }
                _ => return None,
            }
        }
    }
}

/// A key at `i`, its `:` and the whitespace after: where its value starts.
fn key(b: &[u8], i: usize, high: &mut bool) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let j = ws(b, string(b, i, high)?);
    (b.get(j) == Some(&b':')).then(|| ws(b, j + 1))
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b.get(i..)?.starts_with(word).then_some(i + word.len())
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` at `i`; one past it.
/// What follows is the caller's to judge.
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(b, i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(b, i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(b, i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

/// The string opening at `open`: one past its closing quote; `None` for a
/// control byte, a bad escape or no end. Sets `high` when a byte past
/// ASCII was read (its words may run past the string: that only costs a
/// UTF-8 check).
fn string(b: &[u8], open: usize, high: &mut bool) -> Option<usize> {
    let mut i = open + 1;
    loop {
        // Eight bytes at a time to the first `"`, `\` or control byte.
        while let Some(word) = b.get(i..i + 8) {
            let w = u64::from_le_bytes(<[u8; 8]>::try_from(word).ok()?);
            let equal = |byte: u8| {
                let v = w ^ (ONES * u64::from(byte));
                !(((v & LOW7) + LOW7) | v | LOW7)
            };
            // Below 0x20: exact for the lowest byte that is (borrows only
            // run upward), which is the one looked at.
            let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
            let hits = equal(b'"') | equal(b'\\') | control;
            *high |= w & HIGH != 0;
            if hits != 0 {
                i += hits.trailing_zeros() as usize / 8;
                break;
            }
            i += 8;
        }
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => {
                i += match *b.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                    b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => 6,
                    _ => return None,
                };
            }
            0..=0x1f => return None,
            byte => {
                *high |= byte >= 0x80;
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn serde(b: &[u8]) -> bool {
        std::str::from_utf8(b).is_ok_and(|s| serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok())
    }

    #[test]
    fn cases_agree_with_serde_json() {
        let deep_ok = format!("{}{}", "[".repeat(300), "]".repeat(300));
        let deep_mixed = format!("{}1{}", "[{\"a\":".repeat(150), "}]".repeat(150));
        let deep_bad = format!("{}{}", "[".repeat(300), "]".repeat(299));
        let cases: &[&[u8]] = &[
            b"",
            b" ",
            b"{}",
            b" { } ",
            b"[]",
            b"[ ]",
            b"1",
            b"-",
            b"-0",
            b"01",
            b"1.",
            b"1.5",
            b".5",
            b"1e",
            b"1e+",
            b"1E-7",
            b"1e5x",
            b"-1.5e+10",
            b"null",
            b"nul",
            b"nullx",
            b"true false",
            b"\"\"",
            b"\"\\ud800\"",
            b"\"\\u12\"",
            b"\"\\u12g4\"",
            b"\"\\x\"",
            b"\"a\x01b\"",
            b"\"a\x1fb\"",
            b"\"a\x7fb\"",
            b"\"tab\there\"",
            b"\"\\/\\b\\f\\n\\r\\t\\\\\\\"\"",
            b"\"unterminated",
            b"\"ends in escape\\",
            b"{\"a\":1,}",
            b"[1,]",
            b"[,1]",
            b"{,}",
            b"{\"a\" 1}",
            b"{\"a\":}",
            b"{1:2}",
            b"{\"a\":1 \"b\":2}",
            b"[1 2]",
            b"[1}",
            b"{\"a\":[}]",
            b"\x0c{}",
            b"{}\x0c",
            b"{} {}",
            b"\xef\xbb\xbf{}",
            b"\"\xe9\"",
            b"\"\xc3\xa9\"",
            b"\"0123456789\xff\"",
            b"\"0123456789\xc3\xa9 and more text\"",
            b"[\"a\", \xc3\xa9]",
            b"{\"\xf0\x9f\x9a\x80\":\"\xc3\"}",
            b"{\"a\":\"0123456789abcdef0123456789\\\"x\"}",
            b"{\"k\":\"0123456789abc\x01ef0123456789\"}",
            deep_ok.as_bytes(),
            deep_mixed.as_bytes(),
            deep_bad.as_bytes(),
        ];
        for case in cases {
            assert_eq!(valid(case), serde(case), "{:?}", String::from_utf8_lossy(case));
        }
    }

    /// JSON text, then perhaps cut, a byte changed, put in or taken out.
    fn text() -> impl Strategy<Value = Vec<u8>> {
        let bytes = prop::sample::select(vec![
            b'"', b'\\', b',', b':', b'[', b']', b'{', b'}', b' ', b'\n', b'\x0c', b'\x01', b'\x1f', b'0', b'1', b'-',
            b'+', b'.', b'e', b'E', b'u', b'a', b'n', b't', b'f', 0xc3, 0xe9, 0xff,
        ]);
        (
            crate::json::scan::tests::value(),
            any::<bool>(),
            0u8..5,
            any::<prop::sample::Index>(),
            bytes,
        )
            .prop_map(|(v, pretty, edit, at, byte)| {
                let mut t = if pretty {
                    serde_json::to_vec_pretty(&v).unwrap_or_default()
                } else {
                    serde_json::to_vec(&v).unwrap_or_default()
                };
                let at = at.index(t.len() + 1);
                match edit {
                    0 => {}
                    1 => t.truncate(at),
                    2 if at < t.len() => t[at] = byte,
                    3 => t.insert(at, byte),
                    _ if at < t.len() => {
                        t.remove(at);
                    }
                    _ => {}
                }
                t
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn accepts_exactly_what_serde_json_accepts(t in text()) {
            prop_assert_eq!(valid(&t), serde(&t), "{:?}", String::from_utf8_lossy(&t));
        }
    }
}
