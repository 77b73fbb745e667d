#!/usr/bin/env bash
# Gateway overhead, measured side by side on loopback: requests sent straight
# to the mock upstream vs through `examples/gateway.rs`, with the primary OK
# and with the primary answering 503 (a fallback on every request), at fixed
# rates of 100 and 500 req/s and at maximum concurrency.
#
#   benches/gateway.sh [SECONDS_PER_RUN]     # default 10
#
# Needs `oha` (installed with `cargo install oha --locked` if missing) and
# python3 for the table. Not run in CI. Everything listens on 127.0.0.1 and
# every run is bounded by its duration.
#
# "added" is the gateway's own share: for primary OK, gateway - direct; for a
# fallback, gateway - (direct 503 + direct OK), since the gateway must make
# both upstream calls. The same is measured for `benches/proxy_floor.rs`,
# the least a fallback proxy does (buffer, rewrite the model, send, buffer,
# and once more on a non-2xx): what any gateway adds on this machine. Fixed-rate runs use --latency-correction (no
# coordinated omission). The last table is each proxy's CPU per answered
# request (its process's user + system time over the run) and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-10}
RATES=(100 500)
RATE_CONNECTIONS=${RATE_CONNECTIONS:-16}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-64}
MOCK=127.0.0.1:${MOCK_PORT:-19101}
GW=127.0.0.1:${GATEWAY_PORT:-19102}
FLOOR=127.0.0.1:${FLOOR_PORT:-19103}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}

command -v oha >/dev/null || cargo install oha --locked
command -v python3 >/dev/null || { echo "python3 is needed for the table" >&2; exit 1; }
cargo build --release --quiet --example gateway
BIN=$CARGO_TARGET_DIR/release/examples/gateway
# The floor: the same hops with nothing but buffering and the model rewrite.
FLOOR_BIN=$(cargo bench --bench proxy_floor --no-run 2>&1 | grep -o "$CARGO_TARGET_DIR/release/deps/proxy_floor-[0-9a-f]*" | head -1)

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/bench.toml" <<EOF
# The scenarios pick the healthy chain by header.
allow_chain_header = true

[gateway]
upstream = "http://$MOCK/api/v1"
metrics = true

[chains.default]
deadline = "30s"

[[chains.default.routes]]
model = "anthropic/claude-3.5-sonnet"
label = "primary"
timeout = "10s"

[[chains.default.routes]]
model = "openai/gpt-4o"
label = "secondary"
timeout = "10s"

[[chains.healthy.routes]]
model = "openai/gpt-4o"
label = "primary"
timeout = "10s"
EOF

# Logging off the hot path: errors only (the default, info, prints one WARN
# line per failed attempt).
RUST_LOG=${RUST_LOG:-error} "$BIN" --serve-mock "$MOCK" >"$work/mock.log" 2>&1 &
pids+=($!)
RUST_LOG=${RUST_LOG:-error} "$BIN" --config "$work/bench.toml" --listen "$GW" >"$work/gateway.log" 2>&1 &
pids+=($!)
"$FLOOR_BIN" --listen "$FLOOR" --upstream "http://$MOCK/api/v1/chat/completions" \
    --primary anthropic/claude-3.5-sonnet --fallback openai/gpt-4o >"$work/floor.log" 2>&1 &
pids+=($!)

sleep 0.3
for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || {
        cat "$work/mock.log" "$work/gateway.log" >&2
        echo "a server did not start (ports $MOCK, $GW in use?)" >&2
        exit 1
    }
done
for _ in $(seq 100); do
    if curl -fs "http://$GW/health" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -fs "http://$GW/health" >/dev/null || { cat "$work/gateway.log" >&2; exit 1; }

body() { printf '{"model":"%s","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":32}' "$1"; }
body anthropic/claude-3.5-sonnet >"$work/down.json"
body openai/gpt-4o >"$work/ok.json"

# CPU time (user + system, clock ticks) a process has used so far: fields
# 14 and 15 of /proc/PID/stat, counted after the command name's parentheses.
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
GW_PID=${pids[1]}
FLOOR_PID=${pids[2]}

# name url body-file extra-oha-args...
# Also writes the gateway's and the floor's CPU ticks used during the run.
run() {
    local name=$1 url=$2 file=$3
    shift 3
    local gw0 fl0
    gw0=$(ticks "$GW_PID")
    fl0=$(ticks "$FLOOR_PID")
    oha --no-tui --output-format json -z "${SECS}s" -m POST \
        -H 'content-type: application/json' -D "$file" "$@" "$url" >"$work/$name.json"
    echo "$(($(ticks "$GW_PID") - gw0)) $(($(ticks "$FLOOR_PID") - fl0))" >"$work/$name.cpu"
}

# One row per scenario: name | URL | body | the header it sends.
ROWS=(
    "direct_ok|http://$MOCK/api/v1/chat/completions|$work/ok.json|x-bench: direct"
    "direct_503|http://$MOCK/api/v1/chat/completions|$work/down.json|x-bench: direct"
    "gateway_ok|http://$GW/v1/chat/completions|$work/ok.json|x-fallback-chain: healthy"
    "gateway_fallback|http://$GW/v1/chat/completions|$work/down.json|x-bench: gateway"
    "floor_ok|http://$FLOOR/v1/chat/completions|$work/ok.json|x-floor-primary: openai/gpt-4o"
    "floor_fallback|http://$FLOOR/v1/chat/completions|$work/down.json|x-bench: floor"
)
declare -A URL BODY HDR
SCENARIOS=()
for row in "${ROWS[@]}"; do
    IFS='|' read -r name url file header <<<"$row"
    SCENARIOS+=("$name")
    URL[$name]=$url
    BODY[$name]=$file
    HDR[$name]=$header
done

# Warm up both processes (connection pools, allocator).
for s in "${SCENARIOS[@]}"; do
    oha --no-tui --output-format quiet -n 2000 -c 16 -m POST -H 'content-type: application/json' \
        -H "${HDR[$s]}" -D "${BODY[$s]}" "${URL[$s]}" >/dev/null
done

for rate in "${RATES[@]}"; do
    for s in "${SCENARIOS[@]}"; do
        echo "rate $rate: $s" >&2
        run "${s}_q$rate" "${URL[$s]}" "${BODY[$s]}" -H "${HDR[$s]}" -q "$rate" -c "$RATE_CONNECTIONS" --latency-correction
    done
done
for s in "${SCENARIOS[@]}"; do
    echo "max concurrency ($MAX_CONNECTIONS): $s" >&2
    run "${s}_max" "${URL[$s]}" "${BODY[$s]}" -H "${HDR[$s]}" -c "$MAX_CONNECTIONS"
done

SCENARIOS="${SCENARIOS[*]}" CLK_TCK=$(getconf CLK_TCK) python3 - "$work" "$SECS" "$RATE_CONNECTIONS" "$MAX_CONNECTIONS" "${RATES[@]}" <<'PY'
import json, os, sys
work, secs, rate_c, max_c, rates = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
clk_tck = int(os.environ["CLK_TCK"])
scenarios = os.environ["SCENARIOS"].split()  # ROWS' names, in order

def load(name):
    with open(os.path.join(work, name + ".json")) as f:
        d = json.load(f)
    lat = d["latencyPercentiles"]
    codes = d.get("statusCodeDistribution", {})
    return {
        "rps": d["summary"]["requestsPerSec"],
        "p50": lat["p50"] * 1e3,
        "p99": lat["p99"] * 1e3,
        "codes": ", ".join(f"{k}: {v}" for k, v in sorted(codes.items())),
        "ok": codes.get("200", 0),
    }

def cpu_us(name, proxy):
    """The proxy's CPU (user + system) per 200 answer during run `name`, in µs."""
    with open(os.path.join(work, name + ".cpu")) as f:
        gw, floor = (int(t) for t in f.read().split())
    ticks = gw if proxy == "gateway" else floor
    ok = load(name)["ok"]
    return ticks / clk_tck * 1e6 / ok if ok else float("nan")

print(f"\n{secs}s per run; fixed rates with {rate_c} connections and --latency-correction; max with {max_c} connections\n")
print("| load | path | req/s | p50 ms | p99 ms | statuses |")
print("|---|---|---:|---:|---:|---|")
for label, suffix in [(f"{r} req/s", f"_q{r}") for r in rates] + [("max", "_max")]:
    for s in scenarios:
        m = load(s + suffix)
        print(f"| {label} | {s.replace('_', ' ')} | {m['rps']:.0f} | {m['p50']:.3f} | {m['p99']:.3f} | {m['codes']} |")

print("\n| load | proxy | added p50 ms | added p99 ms | added p50 ms (fallback) | added p99 ms (fallback) |")
print("|---|---|---:|---:|---:|---:|")
for label, suffix in [(f"{r} req/s", f"_q{r}") for r in rates] + [("max", "_max")]:
    ok, down = load("direct_ok" + suffix), load("direct_503" + suffix)
    for proxy in ["gateway", "floor"]:
        pok, pfb = load(proxy + "_ok" + suffix), load(proxy + "_fallback" + suffix)
        row = [pok["p50"] - ok["p50"], pok["p99"] - ok["p99"],
               pfb["p50"] - (ok["p50"] + down["p50"]), pfb["p99"] - (ok["p99"] + down["p99"])]
        print(f"| {label} | {proxy} | " + " | ".join(f"{v:.3f}" for v in row) + " |")

print("\nCPU per answered request in the proxy's own process (/proc/PID/stat, user + system; "
      f"{clk_tck} ticks a second), and the gateway's over the floor's:\n")
print("| load | primary OK: gateway µs | floor µs | ratio | fallback: gateway µs | floor µs | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|")
for label, suffix in [(f"{r} req/s", f"_q{r}") for r in rates] + [("max", "_max")]:
    cells = []
    for kind in ["ok", "fallback"]:
        g, f = cpu_us(f"gateway_{kind}{suffix}", "gateway"), cpu_us(f"floor_{kind}{suffix}", "floor")
        cells += [f"{g:.1f}", f"{f:.1f}", f"{g / f:.2f}×"]
    print(f"| {label} | " + " | ".join(cells) + " |")
PY
