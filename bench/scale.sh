#!/usr/bin/env bash
# Many plugins in one process: start-up time (to /ready) and resident memory of `sluice run`
# with 10, 100 and 1000 plugins, one route each (the Rust SDK test plugin, copy-header; 2 worker
# threads, so 2 VMs per plugin unless VMS is set). Each count is started twice: cold (empty
# compiled-code cache) and warm (cache filled by the cold run); the RSS is read 2 s after
# ready and one request. In the warm run, one plugin's settings are then changed and the
# config reloaded (POST /reload, which answers once the new config serves), RELOADS times:
# the median reload time is printed per count. Prints a table and the figures against the
# targets.
#
# Usage: bash bench/scale.sh      (or: make bench-scale)
# Environment: COUNTS (default "10 100 1000"), VMS (default: one per worker thread), THREADS (2)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COUNTS="${COUNTS:-10 100 1000}"
RELOADS="${RELOADS:-5}"
THREADS="${THREADS:-2}"
VMS="${VMS:-}"
SLUICE_BIN="$ROOT/target/release/sluice"
PLUGIN="$ROOT/target/wasm32-wasip1/release/sluice_test_plugin_sdk_rust.wasm"

log() { printf '[scale] %s\n' "$*" >&2; }
[[ -x "$SLUICE_BIN" ]] || (cd "$ROOT" && cargo build --release -p sluice-proxy)
[[ -f "$PLUGIN" ]] || (cd "$ROOT" && cargo build --release --target wasm32-wasip1 -p sluice-test-plugin-sdk-rust)

WORK="$(mktemp -d)"
PID=""
cleanup() {
    [[ -n "$PID" ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
cp "$PLUGIN" "$WORK/sdk.wasm"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# config N: N routes and plugins.
config() {
    local n="$1" listen="$2" admin="$3" up="$4" policy="${5:-fail_closed}" i vms=""
    [[ -n "$VMS" ]] && vms=", vms: $VMS"
    echo "server: { threads: $THREADS, grace_period_seconds: 1 }"
    echo "listeners: [{ name: public, address: '127.0.0.1:$listen' }]"
    echo "admin: { address: '127.0.0.1:$admin' }"
    echo "upstreams: { backend: { endpoints: ['127.0.0.1:$up'] } }"
    echo "routes:"
    for ((i = 0; i < n; i++)); do
        echo "  - { name: r$i, match: { path_prefix: '/p$i/' }, upstream: backend, plugins: [p$i] }"
    done
    echo "plugins:"
    for ((i = 0; i < n; i++)); do
        # p0's failure policy is what the reload measurement changes.
        local on_error=fail_closed
        ((i == 0)) && on_error="$policy"
        echo "  p$i: { path: sdk.wasm, config: { mode: copy-header }, on_error: $on_error$vms }"
    done
}

rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }

UP_PORT="$(free_port)"
"$SLUICE_BIN" upstream --address "127.0.0.1:$UP_PORT" >"$WORK/upstream.log" 2>&1 &
UP_PID=$!
trap 'kill $UP_PID 2>/dev/null; cleanup' EXIT

ROWS=()
BASE_RSS=""
declare -A RELOAD_MS=()
for n in 0 $COUNTS; do
    export SLUICE_WASM_CACHE="$WORK/cache-$n"
    for run in cold warm; do
        listen="$(free_port)" admin="$(free_port)"
        config "$n" "$listen" "$admin" "$UP_PORT" >"$WORK/sluice-$n.yaml"
        start=$(date +%s.%N)
        "$SLUICE_BIN" run --config "$WORK/sluice-$n.yaml" --log-level warn >"$WORK/sluice-$n-$run.log" 2>&1 &
        PID=$!
        ok=""
        for ((i = 0; i < 1200; i++)); do
            if curl -fsS -o /dev/null "http://127.0.0.1:$admin/ready" 2>/dev/null; then ok=1; break; fi
            kill -0 "$PID" 2>/dev/null || break
            sleep 0.05
        done
        took=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }')
        if [[ -z "$ok" ]]; then
            log "$n plugins ($run): not ready; last log lines:"
            tail -5 "$WORK/sluice-$n-$run.log" >&2
            ROWS+=("$n|$run|failed|failed||-")
        else
            if ((n > 0)); then
                curl -fsS -o /dev/null "http://127.0.0.1:$listen/p$((n - 1))/x" || log "route /p$((n - 1))/ failed"
            fi
            sleep 2
            rss=$(rss_kib "$PID")
            [[ "$n" == 0 && "$run" == warm ]] && BASE_RSS="$rss"
            per=""
            if ((n > 0)) && [[ -n "$BASE_RSS" ]]; then
                per=$(awk -v r="$rss" -v b="$BASE_RSS" -v n="$n" 'BEGIN { printf "%.3f", (r - b) / 1024 / n }')
            fi
            reload="-"
            if ((n > 0)) && [[ "$run" == warm ]]; then
                times=()
                for ((r = 0; r < RELOADS; r++)); do
                    policy=fail_open
                    ((r % 2 == 1)) && policy=fail_closed
                    config "$n" "$listen" "$admin" "$UP_PORT" "$policy" >"$WORK/sluice-$n.yaml"
                    t=$(curl -fsS -o /dev/null -w '%{time_total}' -X POST "http://127.0.0.1:$admin/reload") \
                        || { log "reload with $n plugins failed"; t=""; }
                    [[ -n "$t" ]] && times+=("$t")
                done
                if ((${#times[@]} > 0)); then
                    reload=$(printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "%.1f", a[int((NR + 1) / 2)] * 1000 }')
                fi
            fi
            ROWS+=("$n|$run|$took|$((rss / 1024))|$per|$reload")
        fi
        kill "$PID" 2>/dev/null
        wait "$PID" 2>/dev/null || true
        PID=""
    done
done

echo
printf '%-8s %-5s %12s %10s %16s %16s\n' plugins cache "start-up s" "RSS MiB" "MiB per plugin" "reload 1 ms"
for row in "${ROWS[@]}"; do
    IFS='|' read -r n run took rss per reload <<<"$row"
    printf '%-8s %-5s %12s %10s %16s %16s\n' "$n" "$run" "$took" "$rss" "${per:--}" "${reload:--}"
    [[ "$run" == warm && "$reload" != "-" && -n "$reload" ]] && RELOAD_MS[$n]="$reload"
done
echo
last="${ROWS[-1]}"
IFS="|" read -r n run took rss per _reload <<<"$last"
met() { awk -v f="$1" -v l="$2" 'BEGIN { exit !(f != "" && f + 0 <= l + 0) }' && echo yes || echo no; }
echo "target: $n plugins load: $([[ "$took" != failed ]] && echo yes || echo no)"
echo "target: start-up with $n plugins, code cached ≤ 5 s: ${took}s, $(met "$took" 5)"
echo "target: ≤ 0.3 MiB resident per idle plugin: ${per:-n/a}, $(met "$per" 0.3)"
counts=($COUNTS)
small="${counts[0]}" large="${counts[-1]}"
if [[ -n "${RELOAD_MS[$small]:-}" && -n "${RELOAD_MS[$large]:-}" ]]; then
    ratio=$(awk -v a="${RELOAD_MS[$large]}" -v b="${RELOAD_MS[$small]}" 'BEGIN { printf "%.2f", a / b }')
    # "As fast": within 1.5× (the figures are a few ms on a noisy machine).
    echo "target: reloading one plugin among $large as fast as among $small: ${RELOAD_MS[$large]} ms vs ${RELOAD_MS[$small]} ms (${ratio}×), $(met "$ratio" 1.5)"
fi
