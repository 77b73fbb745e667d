//! Reads criterion's estimates back after a run and prints the ratios a
//! group exists to show (criterion reports each function alone).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::SystemTime;

/// Where criterion writes its results: `$CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`, else `target/criterion` (as criterion
/// itself decides, minus its `cargo metadata` fallback).
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("criterion"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/criterion"),
    }
}

/// Mean time in nanoseconds of `group/function/parameter`, if it was
/// measured after `since` (an older file is from another run).
pub fn mean_ns(since: SystemTime, group: &str, function: &str, parameter: &str) -> Option<f64> {
    let path = criterion_home()
        .join(group)
        .join(function)
        .join(parameter)
        .join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

/// Whether criterion is really measuring (not `--test`, `--list`, or a
/// profile run), so estimates are fresh.
pub fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench")
        && !args
            .iter()
            .any(|a| a == "--test" || a == "--list" || a.starts_with("--profile-time"))
}

/// Formats nanoseconds with a unit that keeps three significant digits.
pub fn time(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.3} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}
