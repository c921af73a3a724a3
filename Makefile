# OurChat: the two commands a developer needs are `make run` and `make test`.
CARGO ?= cargo
ARGS ?=

.PHONY: bench run test fmt-check lint unit build release clean

## Short benchmark of every loadgen scenario (a few minutes); prints a table.
## `scripts/bench.sh full` produces the BENCHMARKS.md figures.
bench:
	scripts/bench.sh

## Run a node on the embedded store in ./data, client TCP on :50003.
run:
	$(CARGO) run --release --bin ourchat -- serve $(ARGS)

## Everything CI checks: formatting, lints as errors, every test.
test: fmt-check lint unit

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --workspace --release

clean:
	$(CARGO) clean
