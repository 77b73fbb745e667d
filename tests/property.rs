//! The rewrite oracle (`tests/support/oracle.rs`) as a property test: random
//! chat-shaped objects, with the model anywhere, spelled with escapes,
//! missing, duplicated or not a string, then damaged at random, checked
//! against serde_json. `fuzz/` runs the same oracle under libFuzzer.
//!
//! `PROPTEST_CASES` raises the number of cases (default 512 per property).

#[path = "support/oracle.rs"]
mod oracle;

use oracle::{check, Verdict};
use proptest::prelude::*;
use serde_json::Value;

/// Strings with what makes JSON strings hard: quotes, backslashes,
/// controls, non-ASCII, astral characters, the word "model".
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z \"\\\\/\n\t\u{1}\u{e9}\u{2028}\u{1f680}{}\\[\\]:,]{0,24}",
        Just("model".to_owned()),
        Just(r#"{"model":"inner"}"#.to_owned()),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::vec((text(), inner), 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// How the top-level `model` appears.
#[derive(Debug, Clone)]
enum Model {
    String(String),
    Missing,
    NotAString(Value),
    Twice(String, String),
}

fn model() -> impl Strategy<Value = Model> {
    prop_oneof![
        6 => text().prop_map(Model::String),
        1 => Just(Model::Missing),
        1 => value().prop_filter("not a string", |v| !v.is_string()).prop_map(Model::NotAString),
        1 => (text(), text()).prop_map(|(a, b)| Model::Twice(a, b)),
    ]
}

/// A key written as JSON: plainly, or with some characters as `\uXXXX`.
fn key_literal(key: &str, escape_mask: u32) -> String {
    let mut out = String::from("\"");
    for (i, c) in key.chars().enumerate() {
        if escape_mask >> (i % 32) & 1 == 1 || c < ' ' || c == '"' || c == '\\' {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out += &format!("\\u{u:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out + "\""
}

/// A request body: chat-like members and random ones in random order,
/// random whitespace, values compact or pretty.
fn body() -> impl Strategy<Value = String> {
    let ws = || "[ \t\r\n]{0,2}";
    // Keys the crate reads (and refuses twice) are rarer than the rest.
    let other_key = prop_oneof![
        3 => Just("messages".to_owned()),
        3 => Just("temperature".to_owned()),
        3 => Just("tools".to_owned()),
        1 => Just("stream".to_owned()),
        1 => Just("provider".to_owned()),
        1 => Just("models".to_owned()),
        8 => "[a-z_\"\\\\\u{e9}\u{1}]{0,8}",
    ];
    let member = (other_key, value(), any::<bool>(), any::<u32>(), ws(), ws(), ws(), ws());
    (
        prop::collection::vec(member, 0..7),
        model(),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        any::<u32>(),
        ws(),
        ws(),
    )
        .prop_map(|(members, model, at, at2, mask, lead, tail)| {
            let mut parts: Vec<String> = members
                .into_iter()
                .map(|(key, v, pretty, mask, w1, w2, w3, w4)| {
                    let v = if pretty {
                        serde_json::to_string_pretty(&v)
                    } else {
                        serde_json::to_string(&v)
                    };
                    format!("{w1}{}{w2}:{w3}{}{w4}", key_literal(&key, mask), v.unwrap())
                })
                .collect();
            let model_member = |v: &Value, mask: u32| format!("{} : {}", key_literal("model", mask), v);
            match model {
                Model::String(s) => parts.insert(at.index(parts.len() + 1), model_member(&Value::from(s), mask)),
                Model::Missing => {}
                Model::NotAString(v) => parts.insert(at.index(parts.len() + 1), model_member(&v, mask)),
                Model::Twice(a, b) => {
                    parts.insert(at.index(parts.len() + 1), model_member(&Value::from(a), mask));
                    parts.insert(at2.index(parts.len() + 1), model_member(&Value::from(b), mask >> 3));
                }
            }
            format!("{lead}{{{}}}{tail}", parts.join(","))
        })
}

/// Damage: bytes replaced, inserted or removed anywhere, or tokens that are
/// invalid JSON spliced in (where nested, the crate may rightly accept).
fn damaged() -> impl Strategy<Value = Vec<u8>> {
    let edit = (
        any::<prop::sample::Index>(),
        0..4u8,
        any::<u8>(),
        prop::sample::select(vec![
            &b"tru"[..],
            b"01",
            b"\"\\q\"",
            b"1.",
            b",",
            b"}",
            b"]",
            b"\"",
            b"\\",
            b"\xff",
            b"\x01",
            b"\"model\":\"x\",",
        ]),
    );
    (body(), prop::collection::vec(edit, 1..4)).prop_map(|(text, edits)| {
        let mut bytes = text.into_bytes();
        for (at, op, byte, token) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                2 if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => {
                    bytes.splice(i..i, token.iter().copied());
                }
            }
        }
        bytes
    })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // An integration test has no lib.rs beside it to persist failures
        // next to; a failure prints its minimal input instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn valid_bodies_follow_the_oracle(body in body(), new_model in text()) {
        check(body.as_bytes(), &new_model);
    }

    #[test]
    fn damaged_bodies_follow_the_oracle(body in damaged(), new_model in text()) {
        check(&body, &new_model);
    }
}

/// The oracle itself: each verdict is reachable, and it catches a wrong
/// rewrite (so a passing property means something).
#[test]
fn oracle_sanity() {
    assert_eq!(check(br#"{"model":"a","x":[1]}"#, "b"), Verdict::Rewritten);
    assert_eq!(check(br#"{"model":"a","model":"b"}"#, "b"), Verdict::Refused);
    assert_eq!(check(br#"{"model":1}"#, "b"), Verdict::Refused);
    assert_eq!(check(br#"{"model":"a","x":[tru]}"#, "b"), Verdict::RewrittenLenient);
    assert_eq!(check(b"[1]", "b"), Verdict::Refused);
    let wrong = std::panic::catch_unwind(|| {
        let body = br#"{"model":"a","x":"a"}"#;
        let expect = oracle::expect(body);
        assert!(matches!(expect, oracle::Expect::Rewrite(_)));
        // A rewrite of the nested "a" instead of the model must not pass.
        oracle::check_output(body, br#"{"model":"a","x":"b"}"#, "b", expect)
    });
    assert!(wrong.is_err(), "the oracle accepted a rewrite of the wrong string");
}

/// Every seed and every input the fuzzer ever crashed on (`fuzz/seeds`,
/// `fuzz/regressions`), through the same oracle.
#[test]
fn fuzz_seeds_and_regressions() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                continue; // `engine/`: the engine target's (tests/fuzz_regressions.rs)
            }
            let data = std::fs::read(path).unwrap();
            // The fuzz target's input format: `<model> 0xFF <body>`, or a body.
            let (model, body) = match data.iter().position(|&b| b == 0xFF) {
                Some(at) => (String::from_utf8_lossy(&data[..at]).into_owned(), &data[at + 1..]),
                None => ("openai/gpt-4o".to_owned(), &data[..]),
            };
            check(body, &model);
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} seed files found");
}
