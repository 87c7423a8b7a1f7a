# plexd-nodeapi — developer entry points. See README.md.
CARGO ?= cargo
# The target of `make static` / `make cross`; see README "Supported CPUs".
TARGET ?= x86_64-unknown-linux-musl

.PHONY: run test test-emulated bench fuzz static cross dist lint fmt clean

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

## fuzz: every coverage-guided fuzz target (fuzz/, libFuzzer + AddressSanitizer) for
## FUZZ_SECONDS each; findings land in fuzz/artifacts/ and fail the run
FUZZ_SECONDS ?= 60
fuzz:
	CARGO=$(CARGO) scripts/fuzz $(FUZZ_SECONDS)

## static: a static binary in target/$(TARGET)/release/plexd-nodeapi; TARGET is
## x86_64-unknown-linux-musl (default), aarch64-unknown-linux-musl or
## armv7-unknown-linux-musleabihf (armv7-unknown-linux-gnueabihf builds that one too).
## Installs the rustup target / rust-src and Debian cross packages it needs.
static:
	CARGO=$(CARGO) scripts/build-target $(TARGET) static

## cross: a glibc-linked (dynamic) cross build, e.g. TARGET=armv7-unknown-linux-gnueabihf
cross:
	CARGO=$(CARGO) scripts/build-target $(TARGET) dynamic

## dist: every static target into dist/ as plexd-nodeapi-VERSION-TARGET, with SHA-256 sums
dist:
	CARGO=$(CARGO) scripts/dist

## test-emulated: the ARM binaries built and run through the black-box suites under
## qemu-user, plus the unit tests on 32-bit ARM (CI runs this once, after `make test`)
test-emulated:
	CARGO=$(CARGO) scripts/test-emulated

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf .plexd-dev dist fuzz/target
