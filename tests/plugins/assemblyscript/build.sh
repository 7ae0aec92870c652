#!/usr/bin/env bash
# Builds the AssemblyScript test plugin (@solo-io/proxy-runtime SDK) to $OUT, by default
# <repo root>/target/wasm-plugins/sluice_as.wasm. Works from any directory; quick and silent
# apart from its last line when nothing changed. See README.md beside this file.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"

OUT="${OUT:-$repo/target/wasm-plugins/sluice_as.wasm}"
case "$OUT" in
    /*) ;;
    *) OUT="$PWD/$OUT" ;; # relative to the caller's directory, not this script's
esac

say() { echo "build.sh (assemblyscript): $*" >&2; }

# 1. node and npm.
if ! command -v npm >/dev/null 2>&1; then
    say "npm not found; installing Debian's nodejs and npm with apt-get"
    sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            say "not root and no sudo: install node.js and npm by hand, then run this again"
            exit 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1 ||
        ! { $sudo apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null; }; then
        say "could not install nodejs and npm with apt-get; install node.js (>= 14) and npm (>= 7) by hand"
        exit 1
    fi
    if ! command -v npm >/dev/null 2>&1; then
        say "apt-get ran but npm is still not on PATH; install node.js and npm by hand"
        exit 1
    fi
fi

cd "$here"

# 2. The pinned SDK and compiler, from package-lock.json.
stamp="node_modules/.sluice-npm-ci"
asc="node_modules/assemblyscript/bin/asc"
if [ ! -f "$stamp" ] || [ ! -f "$asc" ] || [ package-lock.json -nt "$stamp" ]; then
    say "npm ci"
    npm ci --no-audit --no-fund >&2
    touch "$stamp"
fi

# 3. Compile, unless the output is newer than every input.
stale=1
if [ -f "$OUT" ]; then
    stale=0
    if [ -n "$(find assembly package.json package-lock.json build.sh -newer "$OUT" -print -quit)" ]; then
        stale=1
    fi
fi
if [ "$stale" = 1 ]; then
    mkdir -p "$(dirname "$OUT")"
    tmp="$OUT.tmp.$$"
    trap 'rm -f "$tmp"' EXIT
    say "asc assembly/index.ts -> $OUT"
    # --use abort=abort_proc_exit: the SDK's abort handler (logs, then wasi_unstable.proc_exit),
    # so the module imports no env.abort.
    node "$asc" assembly/index.ts \
        --binaryFile "$tmp" \
        --optimize \
        --use abort=abort_proc_exit >&2
    mv -f "$tmp" "$OUT"
    trap - EXIT
fi

echo "sluice_as.wasm: $OUT ($(wc -c <"$OUT" | tr -d ' ') bytes)"
