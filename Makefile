# plexd-nodeapi — developer entry points. See README.md.
CARGO ?= cargo
MUSL_TARGET := x86_64-unknown-linux-musl

.PHONY: run test bench static lint fmt clean

## run: the daemon against its embedded development control plane (./.plexd-dev)
run:
	$(CARGO) build --quiet
	./target/debug/plexd-nodeapi dev

## test: the whole test suite (unit, integration, black-box over real sockets)
test:
	$(CARGO) test --all-targets -- --test-threads=4

## bench: release build, then the benchmark harness (benches/nodeapi.rs)
bench:
	$(CARGO) build --release --bin plexd-nodeapi
	$(CARGO) bench --bench nodeapi

## static: a static musl binary in target/$(MUSL_TARGET)/release/plexd-nodeapi
static:
	@command -v musl-gcc >/dev/null || { echo "musl-gcc missing: apt-get install musl-tools"; exit 1; }
	rustup target add $(MUSL_TARGET)
	CC_x86_64_unknown_linux_musl=musl-gcc $(CARGO) build --release --target $(MUSL_TARGET) --bin plexd-nodeapi
	@ls -l target/$(MUSL_TARGET)/release/plexd-nodeapi

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf .plexd-dev
