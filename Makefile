# OurChat: the two commands a developer needs are `make run` and `make test`.
CARGO ?= cargo
ARGS ?=

.PHONY: bench bench-peers bench-store run test fmt-check lint unit web web-test build release clean fuzz engines engines-stop

## Short benchmark of every loadgen scenario (a few minutes); prints a table.
## `scripts/bench.sh full` produces the BENCHMARKS.md figures.
bench:
	scripts/bench.sh

## The message store's candidate engines on the node's operation mix
## (CPU per message by batch size, history, sync, recovery, bytes on disk).
## OurChat and Mosquitto side by side, interleaved (mosquitto installed
## when missing); `scripts/bench-peers.sh full` for the BENCHMARKS.md rows.
bench-peers:
	scripts/bench-peers.sh

bench-store:
	STORE_BENCH_DIR=$${TMPDIR:-/tmp} $(CARGO) bench -p ourchat-storage --bench store_mix

## Run a node on the embedded store in ./data: client TCP on :50003, the
## web app (the committed build in web/dist) and its WebSocket on :50080.
WEB_PORT ?= 50080
run:
	$(CARGO) run --release --bin ourchat -- serve \
	  --set 'server.ws_listen="0.0.0.0:$(WEB_PORT)"' --set 'server.web_root="web/dist"' $(ARGS)

## Everything CI checks: formatting, lints as errors, every test, the web app.
test: fmt-check lint unit web-test

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Throwaway MariaDB (two shards), Redis and tansu on free loopback ports
## for the run, installed when missing and stopped afterwards, pass or fail.
ENGINES_DIR ?= target/engines
unit:
	scripts/engines.sh start $(ENGINES_DIR)
	. $(ENGINES_DIR)/env && OURCHAT_REQUIRE_ENGINES=1 $(CARGO) test --workspace; \
	  status=$$?; scripts/engines.sh stop $(ENGINES_DIR); exit $$status

## The web app: regenerate and rebuild web/dist (commit the result).
web:
	scripts/web.sh build

## Web unit tests and the end-to-end run in headless Chromium.
web-test:
	scripts/web.sh test

## Start the engines once and keep them (source target/engines/env, then
## run any `cargo test`); `make engines-stop` ends them.
engines:
	scripts/engines.sh start $(ENGINES_DIR)
	@echo "now: . $(ENGINES_DIR)/env"

engines-stop:
	scripts/engines.sh stop $(ENGINES_DIR)

## Each fuzz target for FUZZ_SECS seconds (not in CI). cargo-fuzz needs
## nightly flags; RUSTC_BOOTSTRAP lets this stable toolchain take them.
## New inputs go to target/fuzz-corpus (the committed seeds stay small);
## crashers land in fuzz/artifacts/<target>/.
FUZZ_SECS ?= 120
FUZZ_TARGETS ?= frame_decoder envelope_handler
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for target in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$target && \
	  (cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$target --sanitizer none \
	    ../target/fuzz-corpus/$$target corpus/$$target -- -max_total_time=$(FUZZ_SECS) -rss_limit_mb=4096) \
	  || exit 1; \
	done

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --workspace --release

clean:
	$(CARGO) clean
