#!/usr/bin/env bash
# Sluice benchmark: compares CPU time per request of
#   - the upstream served directly (reference for the load generator),
#   - nginx as a reverse proxy (1 worker),
#   - bare pingora (bench/bare-pingora: only upstream_peer),
#   - sluice with no plugins, then on routes with 1 and 3 header plugins and with a plugin
#     that buffers and rewrites a 16 KiB response body (next to sluice on the same body),
# all on loopback on this machine, in one run. See docs/benchmarks.md.
#
# Usage: bash bench/run.sh          (or: make bench)
# Environment:
#   DURATION        seconds per measured wrk run (default 10, minimum 8)
#   CONNS           wrk connections (default 50)
#   THREADS         worker threads for bare-pingora and sluice (default 1)
#   ROUNDS          measure every target this many times, report medians (default 1)
#   SKIP_SLUICE=1   do not build or run sluice (e.g. while it does not build yet)
#   BENCH_BASE_PORT first port to try when picking free loopback ports (default 18080)
#   KEEP_TMP=1      keep the temporary directory (configs, logs) after the run
set -euo pipefail

DURATION="${DURATION:-10}"
CONNS="${CONNS:-50}"
THREADS="${THREADS:-1}"
ROUNDS="${ROUNDS:-1}"
SKIP_SLUICE="${SKIP_SLUICE:-0}"
BENCH_BASE_PORT="${BENCH_BASE_PORT:-18080}"
KEEP_TMP="${KEEP_TMP:-0}"
WARMUP_SECONDS=2
READY_TIMEOUT=30

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS_DIR="$ROOT/bench/results"
RESULTS_FILE="$RESULTS_DIR/latest.md"
SLUICE_BIN="$ROOT/target/release/sluice"
BARE_BIN="$ROOT/target/release/bare-pingora"

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    printf '[bench] error: %s\n' "$*" >&2
    exit 1
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_uint "$DURATION" || die "DURATION must be an integer number of seconds (got '$DURATION')"
is_pos() { is_uint "$1" && (($1 > 0)); }
is_pos "$CONNS" || die "CONNS must be a positive integer (got '$CONNS')"
is_pos "$THREADS" || die "THREADS must be a positive integer (got '$THREADS')"
is_pos "$ROUNDS" || die "ROUNDS must be a positive integer (got '$ROUNDS')"
is_uint "$BENCH_BASE_PORT" || die "BENCH_BASE_PORT must be a port number (got '$BENCH_BASE_PORT')"
if ((DURATION < 8)); then
    log "DURATION=$DURATION is below the minimum of 8 s; using 8"
    DURATION=8
fi

# ---------------------------------------------------------------------------
# Cleanup: everything we start is recorded in STARTED_PIDS and stopped on exit
# (normal exit, error, Ctrl-C or SIGTERM).
# ---------------------------------------------------------------------------
STARTED_PIDS=()
WRK_PID=""
WORK=""

# True if PID is a live (non-zombie) child of this shell; guards against
# signalling a recycled PID that no longer belongs to us.
is_our_child() {
    local stat rest
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    rest="${stat##*) }"
    # shellcheck disable=SC2086
    set -- $rest
    [[ "$1" != Z && "$2" == "$$" ]]
}

# Start time (field 22 of /proc/PID/stat) of a process: with the PID, it
# identifies a process unambiguously.
proc_start() {
    local stat rest
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    rest="${stat##*) }"
    # shellcheck disable=SC2086
    set -- $rest
    echo "${20}"
}

stop_pid() {
    local pid="$1" i
    is_our_child "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        is_our_child "$pid" || break
        sleep 0.1
    done
    if is_our_child "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid child i
    trap - EXIT INT TERM
    if [[ -n "$WRK_PID" ]]; then
        stop_pid "$WRK_PID"
    fi
    # Stop in reverse start order. For nginx, TERM on the master stops its
    # workers too; any child still alive afterwards is stopped explicitly.
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
        pid="${STARTED_PIDS[$i]}"
        local children=() starts=() j
        if is_our_child "$pid"; then
            mapfile -t children < <(pgrep -P "$pid" 2>/dev/null || true)
            for child in "${children[@]}"; do
                starts+=("$(proc_start "$child")")
            done
        fi
        stop_pid "$pid"
        # A child that outlived its parent (e.g. an nginx worker after the
        # master had to be killed) is stopped too, if it is still the same process.
        for ((j = 0; j < ${#children[@]}; j++)); do
            child="${children[$j]}"
            if [[ -n "${starts[$j]}" && "$(proc_start "$child")" == "${starts[$j]}" ]]; then
                kill -KILL "$child" 2>/dev/null || true
            fi
        done
    done
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ "$KEEP_TMP" == 1 ]]; then
            log "kept temporary directory $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------
find_nginx() {
    if command -v nginx >/dev/null 2>&1; then
        command -v nginx
    elif [[ -x /usr/sbin/nginx ]]; then
        echo /usr/sbin/nginx
    fi
}

apt_install() {
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || return 1
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || return 1
    log "installing: $*"
    if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "$@"; then
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update &&
            DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "$@"
    fi
}

ensure_tools() {
    local missing=()
    [[ -n "$(find_nginx)" ]] || missing+=(nginx-light)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    if ((${#missing[@]} > 0)); then
        apt_install "${missing[@]}" || log "warning: could not install ${missing[*]}"
    fi
    command -v wrk >/dev/null 2>&1 || die "wrk is required (apt-get install -y wrk)"
    local t
    for t in curl pgrep getconf awk; do
        command -v "$t" >/dev/null 2>&1 || die "$t is required"
    done
}

# ---------------------------------------------------------------------------
# Ports and processes
# ---------------------------------------------------------------------------
NEXT_PORT="$BENCH_BASE_PORT"

port_in_use() {
    (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Sets the variable named $1 to a free loopback port (never the same one twice).
pick_port() {
    local -n out="$1"
    while port_in_use "$NEXT_PORT"; do
        NEXT_PORT=$((NEXT_PORT + 1))
    done
    ((NEXT_PORT < 65536)) || die "no free port found"
    out="$NEXT_PORT"
    NEXT_PORT=$((NEXT_PORT + 1))
}

# wait_http NAME PID URL LOGFILE: poll URL until it answers 2xx, up to READY_TIMEOUT s.
wait_http() {
    local name="$1" pid="$2" url="$3" logfile="$4" header="${5:-}" deadline
    local -a extra=()
    [[ -n "$header" ]] && extra=(-H "$header")
    deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! is_our_child "$pid"; then
            log "$name exited during start-up; last lines of $logfile:"
            tail -n 20 "$logfile" >&2 2>/dev/null || true
            return 1
        fi
        if curl -fsS -o /dev/null --max-time 1 "${extra[@]}" "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    log "$name did not answer $url within ${READY_TIMEOUT}s; last lines of $logfile:"
    tail -n 20 "$logfile" >&2 2>/dev/null || true
    return 1
}

# make_jwt_keys DIR: an HS256 secret and an RS256 key pair for the auth rows, and a token for
# each (sub "bench", valid for a day). Sets HS_K, RS_N (JWK members), HS_TOKEN, RS_TOKEN.
make_jwt_keys() {
    local dir="$1"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/rs.pem" 2>/dev/null ||
        die "openssl cannot make an RSA key"
    eval "$(python3 - "$dir/rs.pem" <<'PY'
import base64, hashlib, hmac, json, subprocess, sys, time
pem = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
secret = hashlib.sha256(b"sluice bench secret").digest()
mod = subprocess.run(["openssl", "rsa", "-in", pem, "-noout", "-modulus"],
                     capture_output=True, text=True, check=True).stdout.strip().split("=")[1]
claims = b64(json.dumps({"sub": "bench", "exp": int(time.time()) + 86400}).encode())
def token(alg, kid, sign):
    head = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
    data = (head + "." + claims).encode()
    return head + "." + claims + "." + b64(sign(data))
hs = token("HS256", "hs", lambda d: hmac.new(secret, d, hashlib.sha256).digest())
rs = token("RS256", "rs", lambda d: subprocess.run(["openssl", "dgst", "-sha256", "-sign", pem],
                                                    input=d, capture_output=True, check=True).stdout)
print(f"HS_K={b64(secret)} RS_N={b64(bytes.fromhex(mod))} HS_TOKEN={hs} RS_TOKEN={rs}")
PY
)"
}

CLK_TCK="$(getconf CLK_TCK)"

# CPU time (utime+stime, clock ticks) of a process, all its threads included.
proc_ticks() {
    local stat rest what="${2:-all}"
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || {
        echo 0
        return
    }
    # Field 2 (comm) may contain spaces; everything after the last ')' is
    # field 3 (state) onwards, so utime (14) and stime (15) are words 12, 13.
    rest="${stat##*) }"
    # shellcheck disable=SC2086
    set -- $rest
    if [[ "$what" == user ]]; then
        echo "${12}"
    else
        echo $((${12} + ${13}))
    fi
}

# CPU ticks of a process plus its direct children (nginx master + workers); with "user",
# user time only.
tree_ticks() {
    local pid="$1" what="${2:-all}" total child
    total="$(proc_ticks "$pid" "$what")"
    while read -r child; do
        [[ -n "$child" ]] || continue
        total=$((total + $(proc_ticks "$child" "$what")))
    done < <(pgrep -P "$pid" 2>/dev/null || true)
    echo "$total"
}

# ---------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------
# run_wrk SECONDS URL OUTFILE: runs wrk in the background and waits, so that
# Ctrl-C / SIGTERM reach our trap immediately (wrk is then killed by cleanup).
run_wrk() {
    local secs="$1" url="$2" out="$3" header="${4:-}" rc=0
    local -a extra=()
    [[ -n "$header" ]] && extra=(-H "$header")
    wrk -t1 -c"$CONNS" -d"${secs}s" --latency "${extra[@]}" "$url" >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || rc=$?
    WRK_PID=""
    return "$rc"
}

# Converts a wrk duration ("512.34us", "1.20ms", "1.01s", "2.00m") to ms.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") f = 0.001
        else if (u == "ms") f = 1
        else if (u == "s") f = 1000
        else if (u == "m") f = 60000
        else if (u == "h") f = 3600000
        else { print "nan"; exit }
        printf "%.3f", n * f
    }'
}

# Per-round samples (space-separated lists) and final medians, keyed by target id.
declare -A S_RPS=() S_P50=() S_P99=() S_REQS=() S_CPU_S=() S_CPU_US=() S_USR_US=()
declare -A R_RPS=() R_P50=() R_P99=() R_REQS=() R_CPU_S=() R_CPU_US=() R_USR_US=() R_NOTE=()
TARGETS=()
declare -A LABEL=() PORT=() PID=() URLPATH=() WRKHDR=()

# add_note ID TEXT
add_note() {
    R_NOTE[$1]="${R_NOTE[$1]:+${R_NOTE[$1]}; }$2"
    log "warning: ${LABEL[$1]}: $2"
}

# measure ID ROUND: warm-up, then the measured wrk run with CPU sampling.
measure() {
    local id="$1" round="$2" url out t0 t1 u0 u1 reqs rps p50 p99 errs non2xx tag=""
    url="http://127.0.0.1:${PORT[$id]}${URLPATH[$id]:-/}"
    out="$WORK/wrk-$id-$round.txt"
    ((ROUNDS > 1)) && tag="round $round: "

    log "${tag}${LABEL[$id]}: warm-up ${WARMUP_SECONDS}s"
    run_wrk "$WARMUP_SECONDS" "$url" "$WORK/wrk-$id-$round-warmup.txt" "${WRKHDR[$id]:-}" ||
        log "warning: warm-up wrk failed for ${LABEL[$id]}"

    log "${tag}${LABEL[$id]}: measuring ${DURATION}s, $CONNS connections"
    t0="$(tree_ticks "${PID[$id]}")"
    u0="$(tree_ticks "${PID[$id]}" user)"
    if ! run_wrk "$DURATION" "$url" "$out" "${WRKHDR[$id]:-}"; then
        cat "$out" >&2 || true
        add_note "$id" "${tag}wrk failed"
        return 0
    fi
    t1="$(tree_ticks "${PID[$id]}")"
    u1="$(tree_ticks "${PID[$id]}" user)"
    if ! is_our_child "${PID[$id]}"; then
        add_note "$id" "${tag}process died during the run"
        return 0
    fi

    reqs="$(awk '/ requests in /{print $1; exit}' "$out")"
    rps="$(awk '/^Requests\/sec:/{print $2; exit}' "$out")"
    p50="$(awk '$1 == "50%" {print $2; exit}' "$out")"
    p99="$(awk '$1 == "99%" {print $2; exit}' "$out")"
    errs="$(awk '/Socket errors:/{sub(/.*Socket errors: */, ""); print; exit}' "$out")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/{print $NF; exit}' "$out")"

    if [[ -z "$reqs" || -z "$rps" || -z "$p50" || -z "$p99" ]] || ((reqs == 0)); then
        cat "$out" >&2
        add_note "$id" "${tag}unparseable wrk output"
        return 0
    fi
    if [[ -n "$errs" ]]; then
        add_note "$id" "${tag}socket errors: $errs"
    fi
    if [[ -n "$non2xx" ]]; then
        add_note "$id" "${tag}non-2xx responses: $non2xx"
    fi

    S_REQS[$id]+=" $reqs"
    S_RPS[$id]+=" $rps"
    S_P50[$id]+=" $(to_ms "$p50")"
    S_P99[$id]+=" $(to_ms "$p99")"
    S_CPU_S[$id]+=" $(awk -v d="$((t1 - t0))" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", d / hz }')"
    S_CPU_US[$id]+=" $(awk -v d="$((t1 - t0))" -v hz="$CLK_TCK" -v n="$reqs" \
        'BEGIN { printf "%.2f", d / hz * 1e6 / n }')"
    S_USR_US[$id]+=" $(awk -v d="$((u1 - u0))" -v hz="$CLK_TCK" -v n="$reqs" \
        'BEGIN { printf "%.2f", d / hz * 1e6 / n }')"
    return 0
}

# median V...: median of numbers (empty if none).
median() {
    (($# > 0)) || return 0
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
        END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
ensure_tools
NGINX="$(find_nginx)"

cd "$ROOT"
if [[ "$SKIP_SLUICE" == 1 ]]; then
    log "SKIP_SLUICE=1: building bare-pingora only"
    cargo build --release -p sluice-bench-bare-pingora
else
    cargo build --release -p sluice-proxy -p sluice-bench-bare-pingora
    # The plugins the plugin rows run: the test plugin built with the public Rust SDK, and
    # the library's plugins as they ship.
    cargo build --release --target wasm32-wasip1 -p sluice-test-plugin-sdk-rust
    cargo build --profile plugin --target wasm32-wasip1 -p sluice-plugin-auth \
        -p sluice-plugin-rate-limit -p sluice-plugin-mask
fi
[[ -x "$BARE_BIN" ]] || die "$BARE_BIN not found after build"
if [[ "$SKIP_SLUICE" != 1 ]]; then
    [[ -x "$SLUICE_BIN" ]] || die "$SLUICE_BIN not found after build"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")"
# nginx workers may run as an unprivileged user; let them reach their temp dirs.
chmod 755 "$WORK"

pick_port UP_PORT
pick_port NGINX_PORT
pick_port BARE_PORT
pick_port SLUICE_PORT
pick_port SLUICE_ADMIN_PORT

# Temp-path directives for the nginx modules that are compiled in, so nginx
# never touches /var/lib/nginx.
nginx_temp_paths() {
    local dir="$1" v m
    v="$("$NGINX" -V 2>&1 || true)"
    printf '    client_body_temp_path %s/client_body;\n' "$dir"
    for m in proxy fastcgi uwsgi scgi; do
        [[ "$v" == *"--without-http_${m}_module"* ]] && continue
        printf '    %s_temp_path %s/%s;\n' "$m" "$dir" "$m"
    done
}

# start_nginx ID CONFDIR: starts nginx (foreground master, 1 worker) in CONFDIR.
start_nginx() {
    local id="$1" dir="$2" pid
    "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout.log" 2>&1 &
    pid=$!
    STARTED_PIDS+=("$pid")
    PID[$id]="$pid"
}

nginx_common() {
    local dir="$1"
    cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 4096;
}
EOF
}

# Writes $WORK/nginx-NAME/nginx.conf: the shared preamble and http settings, then the
# http-block body given on stdin. Sets $dir to that folder.
write_nginx_conf() {
    dir="$WORK/nginx-$1"
    mkdir -p "$dir"
    {
        nginx_common "$dir"
        printf 'http {\n    access_log off;\n'
        nginx_temp_paths "$dir"
        printf '    keepalive_timeout 75s;\n    keepalive_requests 1000000;\n'
        cat
        printf '}\n'
    } >"$dir/nginx.conf"
}

# --- upstream ---------------------------------------------------------------
UPSTREAM_KIND=""
if [[ -n "$NGINX" ]]; then
    write_nginx_conf upstream <<EOF
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        location / {
            default_type text/plain;
            return 200 "hello from upstream\n";
        }
        location ~ body16k\$ {
            default_type text/plain;
            root $WORK/www;
            try_files /16k.txt =404;
        }
    }
EOF
    mkdir -p "$WORK/www"
    # 16 KiB of text with an email address and a card number in every 512 bytes (the mask
    # plugin's work; the rewrite plugin does not care).
    python3 -c '
import sys
line = "customer jane.doe@example.com paid with 4111 1111 1111 1111 on order 12345; "
block = (line * 8)[:512]
sys.stdout.write(block * 32)' >"$WORK/www/16k.txt"
    start_nginx upstream "$dir"
    if wait_http "upstream nginx" "${PID[upstream]}" "http://127.0.0.1:$UP_PORT/" "$dir/error.log"; then
        UPSTREAM_KIND="nginx (1 worker, return 200)"
    else
        log "upstream nginx failed to start; falling back to the sluice echo upstream"
        stop_pid "${PID[upstream]}"
    fi
fi
if [[ -z "$UPSTREAM_KIND" ]]; then
    if [[ ! -x "$SLUICE_BIN" ]]; then
        log "building sluice for its built-in upstream"
        cargo build --release -p sluice-proxy
    fi
    [[ -x "$SLUICE_BIN" ]] || die "no nginx and no $SLUICE_BIN: cannot start an upstream"
    "$SLUICE_BIN" upstream --address "127.0.0.1:$UP_PORT" >"$WORK/upstream.log" 2>&1 &
    PID[upstream]=$!
    STARTED_PIDS+=("${PID[upstream]}")
    wait_http "sluice upstream" "${PID[upstream]}" "http://127.0.0.1:$UP_PORT/" "$WORK/upstream.log" ||
        die "could not start any upstream"
    UPSTREAM_KIND="sluice upstream (built-in echo)"
fi
LABEL[upstream]="upstream direct"
PORT[upstream]="$UP_PORT"
TARGETS+=(upstream)
log "upstream: $UPSTREAM_KIND on 127.0.0.1:$UP_PORT"

# --- nginx reverse proxy ----------------------------------------------------
if [[ -n "$NGINX" ]]; then
    write_nginx_conf proxy <<EOF
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 75s;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
    start_nginx nginx "$dir"
    if wait_http "nginx proxy" "${PID[nginx]}" "http://127.0.0.1:$NGINX_PORT/" "$dir/error.log"; then
        LABEL[nginx]="nginx proxy"
        PORT[nginx]="$NGINX_PORT"
        TARGETS+=(nginx)
    else
        log "warning: nginx proxy did not start; it is left out of this run"
        stop_pid "${PID[nginx]}"
    fi
else
    log "warning: nginx not available; the nginx proxy is left out of this run"
fi

# --- bare pingora -------------------------------------------------------------
"$BARE_BIN" --listen "127.0.0.1:$BARE_PORT" --upstream "127.0.0.1:$UP_PORT" \
    --threads "$THREADS" >"$WORK/bare-pingora.log" 2>&1 &
PID[bare]=$!
STARTED_PIDS+=("${PID[bare]}")
wait_http "bare-pingora" "${PID[bare]}" "http://127.0.0.1:$BARE_PORT/" "$WORK/bare-pingora.log" ||
    die "bare-pingora did not start"
LABEL[bare]="bare pingora"
PORT[bare]="$BARE_PORT"
TARGETS+=(bare)

# --- sluice -------------------------------------------------------------------
if [[ "$SKIP_SLUICE" != 1 ]]; then
    cp "$ROOT/target/wasm32-wasip1/release/sluice_test_plugin_sdk_rust.wasm" "$WORK/sdk.wasm"
    for p in auth rate_limit mask; do
        cp "$ROOT/target/wasm32-wasip1/plugin/sluice_plugin_$p.wasm" "$WORK/$p.wasm"
    done
    make_jwt_keys "$WORK"
    cat >"$WORK/sluice.yaml" <<EOF
listeners:
  - name: bench
    address: 127.0.0.1:$SLUICE_PORT
admin:
  address: 127.0.0.1:$SLUICE_ADMIN_PORT
upstreams:
  backend:
    endpoints: ["127.0.0.1:$UP_PORT"]
routes:
  - name: one-plugin
    match: { path_prefix: "/p1/" }
    upstream: backend
    plugins: [copy1]
  - name: three-plugins
    match: { path_prefix: "/p3/" }
    upstream: backend
    plugins: [copy1, copy2, copy3]
  - name: body-rewrite
    match: { path_prefix: "/rw/" }
    upstream: backend
    plugins: [rewrite]
  - name: auth-hs256
    match: { path_prefix: "/hs/" }
    upstream: backend
    plugins: [auth_hs]
  - name: auth-rs256
    match: { path_prefix: "/rs/" }
    upstream: backend
    plugins: [auth_rs]
  - name: rate-limit
    match: { path_prefix: "/rl/" }
    upstream: backend
    plugins: [limit]
  - name: auth-and-limit
    match: { path_prefix: "/hsrl/" }
    upstream: backend
    plugins: [auth_hs, limit]
  - name: mask
    match: { path_prefix: "/mask/" }
    upstream: backend
    plugins: [mask]
  - name: callout
    match: { path_prefix: "/co/" }
    upstream: backend
    plugins: [callout]
  - name: all
    match: { path_prefix: "/" }
    upstream: backend
plugins:
  copy1: { path: sdk.wasm, config: { mode: copy-header } }
  copy2: { path: sdk.wasm, config: { mode: copy-header } }
  copy3: { path: sdk.wasm, config: { mode: copy-header } }
  rewrite: { path: sdk.wasm, config: { mode: resp-body, tag: rewritten } }
  auth_hs:
    path: auth.wasm
    expose: [authorization]
    config: { jwt: { algorithms: [HS256], jwks: { keys: [{ kty: oct, kid: hs, k: "$HS_K" }] } } }
  auth_rs:
    path: auth.wasm
    expose: [authorization]
    config: { jwt: { algorithms: [RS256], jwks: { keys: [{ kty: RSA, kid: rs, e: AQAB, n: "$RS_N" }] } } }
  limit:
    path: rate_limit.wasm
    config: { key: [route], requests: 1000000000000, period_seconds: 1 }
  mask:
    path: mask.wasm
    config: { presets: [email, card, iban, bearer] }
  callout:
    path: sdk.wasm
    allowed_upstreams: [backend]
    config: { mode: callout, upstream: backend }
EOF
    "$SLUICE_BIN" run --config "$WORK/sluice.yaml" --threads "$THREADS" --log-level warn \
        >"$WORK/sluice.log" 2>&1 &
    PID[sluice]=$!
    STARTED_PIDS+=("${PID[sluice]}")
    wait_http "sluice (admin /ready)" "${PID[sluice]}" \
        "http://127.0.0.1:$SLUICE_ADMIN_PORT/ready" "$WORK/sluice.log" ||
        die "sluice did not become ready"
    wait_http "sluice" "${PID[sluice]}" "http://127.0.0.1:$SLUICE_PORT/" "$WORK/sluice.log" ||
        die "sluice does not proxy to the upstream"
    LABEL[sluice]="sluice"
    PORT[sluice]="$SLUICE_PORT"
    TARGETS+=(sluice)
    # The same process on its plugin routes (one target each, measured in turn).
    add_sluice_target() {
        LABEL[$1]="$2"
        PORT[$1]="$SLUICE_PORT"
        PID[$1]="${PID[sluice]}"
        URLPATH[$1]="$3"
        TARGETS+=("$1")
    }
    add_sluice_target sluice_p1 "sluice 1 plugin" "/p1/"
    add_sluice_target sluice_p3 "sluice 3 plugins" "/p3/"
    add_sluice_target sluice_body "sluice 16K" "/body16k?bytes=16384"
    add_sluice_target sluice_rw "sluice 16K rewrite" "/rw/body16k?bytes=16384"
    add_sluice_target sluice_hs "sluice auth HS256" "/hs/"
    WRKHDR[sluice_hs]="authorization: Bearer $HS_TOKEN"
    add_sluice_target sluice_rs "sluice auth RS256" "/rs/"
    WRKHDR[sluice_rs]="authorization: Bearer $RS_TOKEN"
    add_sluice_target sluice_rl "sluice rate-limit" "/rl/"
    add_sluice_target sluice_hsrl "sluice HS256+limit" "/hsrl/"
    WRKHDR[sluice_hsrl]="authorization: Bearer $HS_TOKEN"
    add_sluice_target sluice_mask "sluice 16K mask" "/mask/body16k?bytes=16384"
    # One pooled HTTP callout per request (to the same upstream, on kept connections).
    add_sluice_target sluice_co "sluice 1 callout" "/co/"
    for id in sluice_p1 sluice_rw sluice_hs sluice_rs sluice_hsrl sluice_mask sluice_co; do
        wait_http "${LABEL[$id]}" "${PID[sluice]}" "http://127.0.0.1:$SLUICE_PORT${URLPATH[$id]}" \
            "$WORK/sluice.log" "${WRKHDR[$id]:-}" || die "sluice does not serve ${URLPATH[$id]}"
    done
else
    log "SKIP_SLUICE=1: sluice is left out of this run"
fi

# --- measure ------------------------------------------------------------------
# With several rounds the starting target rotates, so that slow drifts in the
# machine's speed do not always hit the same target.
n_targets=${#TARGETS[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    for ((k = 0; k < n_targets; k++)); do
        measure "${TARGETS[$(((k + round - 1) % n_targets))]}" "$round"
    done
done
# shellcheck disable=SC2086 # the sample lists are meant to be word-split
for id in "${TARGETS[@]}"; do
    [[ -n "${S_CPU_US[$id]:-}" ]] || continue
    R_REQS[$id]="$(median ${S_REQS[$id]})"
    R_RPS[$id]="$(median ${S_RPS[$id]})"
    R_P50[$id]="$(median ${S_P50[$id]})"
    R_P99[$id]="$(median ${S_P99[$id]})"
    R_CPU_S[$id]="$(median ${S_CPU_S[$id]})"
    R_CPU_US[$id]="$(median ${S_CPU_US[$id]})"
    R_USR_US[$id]="$(median ${S_USR_US[$id]})"
done

# --- report -------------------------------------------------------------------
# ratio A B: R_CPU_US[A] / R_CPU_US[B], or empty if either is missing.
ratio() {
    local a="${R_CPU_US[$1]:-}" b="${R_CPU_US[$2]:-}"
    [[ -n "$a" && -n "$b" ]] || return 0
    awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.3f", a / b }'
}

# extra A B [user]: CPU (or user CPU) µs per request of A minus B as "+N.NN", or empty.
extra() {
    local a b
    if [[ "${3:-}" == user ]]; then
        a="${R_USR_US[$1]:-}" b="${R_USR_US[$2]:-}"
    else
        a="${R_CPU_US[$1]:-}" b="${R_CPU_US[$2]:-}"
    fi
    [[ -n "$a" && -n "$b" ]] || return 0
    awk -v a="$a" -v b="$b" 'BEGIN { printf "%+.2f", a - b }'
}
EXTRA_P1="$(extra sluice_p1 sluice)"
EXTRA_P3="$(extra sluice_p3 sluice)"
EXTRA_RW="$(extra sluice_rw sluice_body)"
EXTRA_P1_U="$(extra sluice_p1 sluice user)"
EXTRA_P3_U="$(extra sluice_p3 sluice user)"
EXTRA_RW_U="$(extra sluice_rw sluice_body user)"
EXTRA_HS="$(extra sluice_hs sluice)"
EXTRA_RS="$(extra sluice_rs sluice)"
EXTRA_RL="$(extra sluice_rl sluice)"
EXTRA_HSRL="$(extra sluice_hsrl sluice)"
EXTRA_MASK="$(extra sluice_mask sluice_body)"
EXTRA_HS_U="$(extra sluice_hs sluice user)"
EXTRA_RS_U="$(extra sluice_rs sluice user)"
EXTRA_RL_U="$(extra sluice_rl sluice user)"
EXTRA_HSRL_U="$(extra sluice_hsrl sluice user)"
EXTRA_MASK_U="$(extra sluice_mask sluice_body user)"
# A callout's own cost is that of an HTTP exchange with the upstream: taken as what bare pingora
# spends on one proxied request (an exchange with the client and one with the upstream, so an
# upper bound). The figure is what the callout plugin costs beyond a plugin that makes none
# (copy-header) and beyond that exchange.
EXTRA_CO="$(extra sluice_co sluice_p1)"
CALLOUT_HOST=""
if [[ -n "$EXTRA_CO" && -n "${R_CPU_US[bare]:-}" ]]; then
    CALLOUT_HOST="$(awk -v a="$EXTRA_CO" -v b="${R_CPU_US[bare]}" 'BEGIN { printf "%+.2f", a - b }')"
fi
# The targets (docs/benchmarks.md): each row prints its figure, the target and whether it is met.
# p99 ratio A B: p99 latency of A / p99 of B.
p99_ratio() {
    local a="${R_P99[$1]:-}" b="${R_P99[$2]:-}"
    [[ -n "$a" && -n "$b" ]] || return 0
    awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.3f", a / b }'
}
RATIO_NGINX="$(ratio sluice nginx)"
RATIO_BARE="$(ratio sluice bare)"
P99_P1="$(p99_ratio sluice_p1 sluice)"
TARGET_ROWS=()
# target LABEL FIGURE LIMIT UNIT: a row "label | figure | ≤ limit | yes/no/n/a".
target() {
    local label="$1" figure="$2" limit="$3" unit="$4" met="n/a"
    if [[ -n "$figure" ]]; then
        if awk -v f="$figure" -v l="$limit" 'BEGIN { exit !(f + 0 <= l + 0) }'; then met="yes"; else met="no"; fi
    fi
    TARGET_ROWS+=("$label|${figure:-n/a}${figure:+$unit}|≤ ${limit}${unit}|$met")
}
target "sluice, no plugin / bare pingora (CPU)" "$RATIO_BARE" 1.05 "×"
target "+ 1 header plugin (Rust SDK copy-header)" "$EXTRA_P1" 3 " µs"
target "+ 3 header plugins" "$EXTRA_P3" 9 " µs"
target "+ auth HS256 + rate-limit" "$EXTRA_HSRL" 10 " µs"
target "+ rate-limit alone" "$EXTRA_RL" 5 " µs"
target "16 KiB response body rewrite" "$EXTRA_RW" 10 " µs"
target "mask on 16 KiB" "$EXTRA_MASK" 60 " µs"
target "1 pooled callout, beyond its own exchange" "$CALLOUT_HOST" 15 " µs"
target "p99 at $CONNS connections, 1 plugin / none" "$P99_P1" 1.2 "×"
TARGETS_MET=0
for row in "${TARGET_ROWS[@]}"; do
    [[ "${row##*|}" == yes ]] && TARGETS_MET=$((TARGETS_MET + 1))
done

cpu_model="$(awk -F': *' '/^model name/{print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"
git_rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null || true)" ]]; then
    git_rev="$git_rev (dirty)"
fi
run_date="$(date -u '+%Y-%m-%d %H:%M UTC')"

echo
printf '%-18s %10s %9s %9s %11s %12s %10s %8s\n' target "req/s" "p50 ms" "p99 ms" "CPU us/req" "user us/req" requests "CPU s"
printf '%-18s %10s %9s %9s %11s %12s %10s %8s\n' ------------------ ---------- --------- --------- ----------- ------------ ---------- --------
for id in "${TARGETS[@]}"; do
    if [[ -n "${R_CPU_US[$id]:-}" ]]; then
        printf '%-18s %10.0f %9.3f %9.3f %11.2f %12.2f %10.0f %8.2f\n' "${LABEL[$id]}" "${R_RPS[$id]}" \
            "${R_P50[$id]}" "${R_P99[$id]}" "${R_CPU_US[$id]}" "${R_USR_US[$id]}" "${R_REQS[$id]}" "${R_CPU_S[$id]}"
    else
        printf '%-18s %10s %9s %9s %11s %12s %10s %8s\n' "${LABEL[$id]}" n/a n/a n/a n/a n/a n/a n/a
    fi
    if [[ -n "${R_NOTE[$id]:-}" ]]; then
        printf '  ! %s\n' "${R_NOTE[$id]}"
    fi
done
if ((ROUNDS > 1)); then
    echo "(medians over $ROUNDS rounds; CPU us/req per round:"
    for id in "${TARGETS[@]}"; do
        printf '   %-18s%s\n' "${LABEL[$id]}" "${S_CPU_US[$id]:- n/a}"
    done
    echo ")"
fi
echo
echo "CPU per request, sluice / nginx:        ${RATIO_NGINX:-n/a}"
echo "CPU per request, sluice / bare pingora: ${RATIO_BARE:-n/a}"
echo "CPU us per request added (all / user space only):"
echo "  1 plugin (copy-header), vs sluice:        ${EXTRA_P1:-n/a} / ${EXTRA_P1_U:-n/a}"
echo "  3 plugins (copy-header x3), vs sluice:    ${EXTRA_P3:-n/a} / ${EXTRA_P3_U:-n/a}"
echo "  16 KiB body rewrite, vs sluice 16K:       ${EXTRA_RW:-n/a} / ${EXTRA_RW_U:-n/a}"
echo "  auth, JWT HS256, vs sluice:               ${EXTRA_HS:-n/a} / ${EXTRA_HS_U:-n/a}"
echo "  auth, JWT RS256, vs sluice:               ${EXTRA_RS:-n/a} / ${EXTRA_RS_U:-n/a}"
echo "  rate-limit, vs sluice:                    ${EXTRA_RL:-n/a} / ${EXTRA_RL_U:-n/a}"
echo "  auth HS256 + rate-limit, vs sluice:       ${EXTRA_HSRL:-n/a} / ${EXTRA_HSRL_U:-n/a}"
echo "  mask on 16 KiB, vs sluice 16K:            ${EXTRA_MASK:-n/a} / ${EXTRA_MASK_U:-n/a}"
echo
echo "Targets (figure, target: met):"
for row in "${TARGET_ROWS[@]}"; do
    IFS='|' read -r t_label t_fig t_lim t_met <<<"$row"
    printf '  %s: %s, target %s: %s\n' "$t_label" "$t_fig" "$t_lim" "$t_met"
done
echo "targets met: $TARGETS_MET of ${#TARGET_ROWS[@]}"
echo

mkdir -p "$RESULTS_DIR"
{
    echo "<!-- generated by bench/run.sh; paste into docs/benchmarks.md -->"
    echo "Run: $run_date, commit $git_rev"
    echo
    echo "Machine: $(nproc) CPU(s)${cpu_model:+, $cpu_model}, Linux $(uname -r)"
    echo
    echo "Settings: wrk -t1 -c$CONNS -d${DURATION}s (after a ${WARMUP_SECONDS}s warm-up), THREADS=$THREADS," \
        "ROUNDS=$ROUNDS, nginx 1 worker, upstream: $UPSTREAM_KIND"
    echo
    echo "| target | req/s | p50 ms | p99 ms | CPU µs/req | user µs/req | requests | CPU s |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for id in "${TARGETS[@]}"; do
        if [[ -n "${R_CPU_US[$id]:-}" ]]; then
            printf '| %s | %.0f | %.3f | %.3f | %.2f | %.2f | %.0f | %.2f |\n' "${LABEL[$id]}" "${R_RPS[$id]}" \
                "${R_P50[$id]}" "${R_P99[$id]}" "${R_CPU_US[$id]}" "${R_USR_US[$id]}" "${R_REQS[$id]}" "${R_CPU_S[$id]}"
        else
            printf '| %s | n/a | n/a | n/a | n/a | n/a | n/a | n/a |\n' "${LABEL[$id]}"
        fi
    done
    echo
    if ((ROUNDS > 1)); then
        echo "Figures are medians over $ROUNDS rounds; ratios are ratios of the medians."
        echo "CPU µs/req per round:"
        echo
        for id in "${TARGETS[@]}"; do
            echo "- ${LABEL[$id]}:${S_CPU_US[$id]:- n/a}"
        done
        echo
    fi
    for id in "${TARGETS[@]}"; do
        if [[ -n "${R_NOTE[$id]:-}" ]]; then
            echo "- warning, ${LABEL[$id]}: ${R_NOTE[$id]}"
        fi
    done
    echo "- CPU per request, sluice / nginx: ${RATIO_NGINX:-n/a}"
    echo "- CPU per request, sluice / bare pingora: ${RATIO_BARE:-n/a}"
    echo "- CPU µs per request added by 1 plugin (copy-header), vs sluice, all / user space: ${EXTRA_P1:-n/a} / ${EXTRA_P1_U:-n/a}"
    echo "- CPU µs per request added by 3 plugins (copy-header ×3), vs sluice, all / user space: ${EXTRA_P3:-n/a} / ${EXTRA_P3_U:-n/a}"
    echo "- CPU µs per request added by a 16 KiB response body rewrite, vs sluice 16K, all / user space: ${EXTRA_RW:-n/a} / ${EXTRA_RW_U:-n/a}"
    echo "- CPU µs per request added by auth (JWT HS256), vs sluice, all / user space: ${EXTRA_HS:-n/a} / ${EXTRA_HS_U:-n/a}"
    echo "- CPU µs per request added by auth (JWT RS256), vs sluice, all / user space: ${EXTRA_RS:-n/a} / ${EXTRA_RS_U:-n/a}"
    echo "- CPU µs per request added by rate-limit, vs sluice, all / user space: ${EXTRA_RL:-n/a} / ${EXTRA_RL_U:-n/a}"
    echo "- CPU µs per request added by auth HS256 + rate-limit, vs sluice, all / user space: ${EXTRA_HSRL:-n/a} / ${EXTRA_HSRL_U:-n/a}"
    echo "- CPU µs per request added by mask on a 16 KiB body, vs sluice 16K, all / user space: ${EXTRA_MASK:-n/a} / ${EXTRA_MASK_U:-n/a}"
    echo
    echo "| target | figure | target | met |"
    echo "|---|---:|---:|---|"
    for row in "${TARGET_ROWS[@]}"; do
        IFS='|' read -r t_label t_fig t_lim t_met <<<"$row"
        echo "| $t_label | $t_fig | $t_lim | $t_met |"
    done
    echo
    echo "Targets met: $TARGETS_MET of ${#TARGET_ROWS[@]}."
} >"$RESULTS_FILE"
log "markdown table written to ${RESULTS_FILE#"$ROOT"/}"
