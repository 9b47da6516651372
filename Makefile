# Entry points. `make run` and `make test` are the README's two commands.
SHELL := /bin/bash
CARGO ?= $(shell command -v cargo 2>/dev/null || echo $(HOME)/.cargo/bin/cargo)
ARGS ?=

.PHONY: run test setup build release lint bench demo

setup:
	bash scripts/setup.sh

build: setup
	$(CARGO) build --workspace

release: setup
	$(CARGO) build --release -p sluice

## Build and run the daemon in the foreground with the built-in defaults
## (manages veth*, socket /run/sluice/sluice.sock). Extra flags: make run ARGS="--iface 'eth1'"
run: release
	./target/release/sluice run $(ARGS)

## Every test tier: unit, BPF_PROG_TEST_RUN and end-to-end in namespaces (as root).
## The root tiers are #[ignore]d for a plain `cargo test`; --include-ignored runs
## them (writer_throughput is a probe that prints, not a check).
test: setup
	@mkdir -p target
	set -o pipefail; $(CARGO) test --workspace --locked -- --include-ignored --skip writer_throughput 2>&1 | tee target/test.log
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "all tiers: %d passed, %d failed\n", p, f}' target/test.log

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

bench: setup
	$(CARGO) bench -p sluice --bench firewall --bench limits --bench events --bench forward --bench l7_load --bench differential
	$(CARGO) bench -p sluice-proto --bench l7_parsers

## The one-minute tour's sandbox.
demo: release
	./target/release/sluice lab up
