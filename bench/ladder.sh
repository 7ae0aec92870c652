#!/usr/bin/env bash
# Concurrency ladder: wrk against the release sluice (a route with the headers plugin, in
# front of the demo upstream) at 1, 10, 50, 100, 250, 500 and 1000 connections; prints
# req/s, p50, p99 and errors at each step as a Markdown table. Figures, not assertions.
#
# Usage: bash bench/ladder.sh        (or: make ladder)
# Environment: STEP_SECONDS (default 5), STEPS (default "1 10 50 100 250 500 1000"),
#              THREADS (sluice worker threads, default 2), KEEP_TMP=1 to keep logs.
set -euo pipefail

STEP_SECONDS="${STEP_SECONDS:-5}"
STEPS="${STEPS:-1 10 50 100 250 500 1000}"
THREADS="${THREADS:-2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SLUICE="$ROOT/target/release/sluice"
PLUGIN="$ROOT/target/wasm32-wasip1/plugin/sluice_plugin_headers.wasm"

die() { printf '[ladder] error: %s\n' "$*" >&2; exit 1; }
command -v wrk >/dev/null 2>&1 || die "wrk is required (apt-get install -y wrk)"
[ -x "$SLUICE" ] || die "$SLUICE is missing: make release"
[ -f "$PLUGIN" ] || die "$PLUGIN is missing: make wasm"
ulimit -n 65536 2>/dev/null || ulimit -n 4096 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
TMP="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "${KEEP_TMP:-0}" = 1 ] && echo "[ladder] kept $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

UP="127.0.0.1:$(free_port)"
LISTEN="127.0.0.1:$(free_port)"
ADMIN="127.0.0.1:$(free_port)"
cp "$PLUGIN" "$TMP/tag.wasm"
cat > "$TMP/sluice.yaml" <<EOF
server: { threads: $THREADS }
listeners: [{ name: public, address: '$LISTEN' }]
admin: { address: '$ADMIN' }
upstreams: { backend: { endpoints: ['$UP'] } }
routes: [{ name: all, upstream: backend, plugins: [tag] }]
plugins:
  tag: { path: tag.wasm, config: { rules: [{ response: { set: { x-tag: ladder } } }] } }
EOF
"$SLUICE" upstream --address "$UP" >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)
"$SLUICE" --log-level warn run --config "$TMP/sluice.yaml" >"$TMP/sluice.log" 2>&1 &
SLUICE_PID=$!
PIDS+=($SLUICE_PID)
for _ in $(seq 1 200); do
    curl -fs "http://$ADMIN/ready" >/dev/null 2>&1 && break
    sleep 0.05
done
curl -fs "http://$ADMIN/ready" >/dev/null || die "sluice did not become ready (see $TMP/sluice.log)"

echo "| connections | req/s | p50 (ms) | p99 (ms) | errors (socket + non-2xx) | sluice RSS (MiB) |"
echo "|---|---|---|---|---|---|"
to_ms() { # wrk prints 1.23ms, 456.78us or 1.02s
    awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 } else print v }'
}
for c in $STEPS; do
    t=$(( c < 2 ? 1 : 2 ))
    out="$(wrk -t"$t" -c"$c" -d"${STEP_SECONDS}s" --latency "http://$LISTEN/ladder" 2>&1)"
    rps="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")"
    p50="$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")"
    p99="$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")"
    sock="$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' <<<"$out")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $5 }' <<<"$out")"
    rss="$(awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$SLUICE_PID/status")"
    echo "| $c | $rps | $p50 | $p99 | $(( ${sock:-0} + ${non2xx:-0} )) | $rss |"
done
