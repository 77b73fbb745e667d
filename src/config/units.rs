//! Durations (`"30s"`, `"250ms"`, `"1m30s"`) and byte sizes (`"32MiB"`) in
//! config files, with the serde glue for the config types.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

const DURATION_EXPECTED: &str =
    "a duration: a number and a unit (h, m, s, ms, us, ns), such as \"30s\", \"250ms\", \"1.5s\" or \"1m30s\"";
const SIZE_EXPECTED: &str =
    "a size in bytes: an integer, or a number and a unit (B, KB, MB, GB, KiB, MiB, GiB), such as \"32MiB\"";

/// Parses `"30s"`, `"250ms"`, `"1.5s"`, `"2m"`, `"1h"`, `"1m30s"` (groups may
/// be separated by spaces).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: expected {DURATION_EXPECTED}");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail.find(|c: char| !c.is_alphabetic()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "h" => 3_600_000_000_000,
            "m" | "min" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            _ => return Err(bad()),
        };
        let part = match number.split_once('.') {
            None => number
                .parse::<u128>()
                .map_err(|_| bad())?
                .checked_mul(unit_ns)
                .ok_or_else(bad)?,
            Some((whole, frac)) => {
                if whole.is_empty() && frac.is_empty() {
                    return Err(bad());
                }
                let value: f64 = number.parse().map_err(|_| bad())?;
                (value * unit_ns as f64).round() as u128
            }
        };
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("duration {text:?} is too long"))?;
        rest = tail.trim_start();
    }
    let nanos = u64::try_from(total).map_err(|_| format!("duration {text:?} is too long"))?;
    Ok(Duration::from_nanos(nanos))
}

/// The shortest exact form [`parse_duration`] reads back: `"1m30s"`, `"250ms"`.
pub(crate) fn format_duration(d: Duration) -> String {
    let mut nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, ns) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ] {
        if nanos >= ns {
            out.push_str(&format!("{}{unit}", nanos / ns));
            nanos %= ns;
        }
    }
    out
}

/// Parses `"32MiB"`, `"4 MB"`, `"512KiB"`, `"1024"` (units are case-insensitive).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {text:?}: expected {SIZE_EXPECTED}");
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    number.checked_mul(factor).ok_or_else(bad)
}

/// `"32MiB"` for an exact number of MiB, else the plainest exact form.
pub(crate) fn format_size(bytes: u64) -> String {
    for (unit, factor) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= factor && bytes % factor == 0 {
            return format!("{}{unit}", bytes / factor);
        }
    }
    format!("{bytes}B")
}

// ===== serde glue =====

/// A duration read from its text form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dur(pub(crate) Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

/// A byte count read from an integer or a text form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Size(pub(crate) u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SIZE_EXPECTED)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(self.0))
    }
}

/// `#[serde(with = "opt_duration")]` for `Option<Duration>`.
pub(crate) mod opt_duration {
    use super::Dur;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        v.map(Dur).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<Dur>::deserialize(d)?.map(|d| d.0))
    }
}

/// `#[serde(with = "opt_size")]` for `Option<u64>` byte counts.
pub(crate) mod opt_size {
    use super::Size;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        v.map(Size).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Ok(Option::<Size>::deserialize(d)?.map(|s| s.0))
    }
}

/// `#[serde(with = "opt_capabilities")]`: a list of capability names.
pub(crate) mod opt_capabilities {
    use crate::Capabilities;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// The names, so serde's "unknown variant" error lists the valid ones.
    #[derive(Clone, Copy, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Name {
        Tools,
        Vision,
        Audio,
        StructuredOutput,
    }

    const ALL: [(Name, Capabilities); 4] = [
        (Name::Tools, Capabilities::TOOLS),
        (Name::Vision, Capabilities::VISION),
        (Name::Audio, Capabilities::AUDIO),
        (Name::StructuredOutput, Capabilities::STRUCTURED_OUTPUT),
    ];

    pub(crate) fn serialize<S: Serializer>(v: &Option<Capabilities>, s: S) -> Result<S::Ok, S::Error> {
        v.map(|caps| {
            ALL.iter()
                .filter(|(_, c)| caps.contains(*c))
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
        })
        .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Capabilities>, D::Error> {
        Ok(Option::<Vec<Name>>::deserialize(d)?.map(|names| {
            names.iter().fold(Capabilities::NONE, |acc, name| {
                acc | ALL
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(Capabilities::NONE, |(_, c)| *c)
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_back() {
        for (text, d) in [
            ("30s", Duration::from_secs(30)),
            ("250ms", Duration::from_millis(250)),
            ("1.5s", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("1m30s", Duration::from_secs(90)),
            ("1m 30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
            ("10us", Duration::from_micros(10)),
            ("0.5ms", Duration::from_micros(500)),
        ] {
            assert_eq!(parse_duration(text), Ok(d), "{text}");
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{text}");
        }
        assert_eq!(format_duration(Duration::from_millis(90_250)), "1m30s250ms");
        for bad in [
            "",
            "30",
            "s",
            "30 sec",
            "1.2.3s",
            "-1s",
            "30s garbage",
            ".s",
            "99999999999999999999h",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("expected") || err.contains("too long"), "{bad}: {err}");
        }
    }

    #[test]
    fn sizes_parse_and_print_back() {
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size("4 MB"), Ok(4_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1gib"), Ok(1 << 30));
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .contains("expected a size in bytes"));
        for n in [0, 1, 1000, 1 << 10, 3 << 20, 5 << 30, 1_000_000] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
        assert_eq!(format_size(32 << 20), "32MiB");
    }
}
