# plexd-nodeapi — developer entry points. See README.md.
CARGO ?= cargo
# The target of `make static` / `make cross`; see README "Supported CPUs".
TARGET ?= x86_64-unknown-linux-musl

# Where `make install` puts things (DESTDIR is prepended to every path; the units and
# the setup script are edited to name BINDIR).
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/plexd-nodeapi
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
LIBEXECDIR ?= $(PREFIX)/lib/plexd-nodeapi
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
# The binary `make install` and `make deb` install (built by `make static`).
BIN ?= target/$(TARGET)/release/plexd-nodeapi

.PHONY: run test api-check test-emulated bench fuzz static cross dist lint fmt clean docs install install-files deb

## run: the daemon against its embedded development control plane (./.plexd-dev), with
## the TCP listener on 127.0.0.1:9100 (or another free port) and a generated token
run:
	@echo "building plexd-nodeapi (the first build takes about a minute)..."
	$(CARGO) build --quiet
	./target/debug/plexd-nodeapi dev --http

## test: the whole test suite (unit, integration, black-box over real sockets)
test:
	$(CARGO) test --all-targets -- --test-threads=4

## api-check: contrib/openapi.json against a live `dev` daemon over TCP with schemathesis
## (every check, fixed seed, 40 examples per operation; installs schemathesis into
## .ci/venv if missing); fails on any failure. CI runs it after `make test`.
api-check:
	CARGO=$(CARGO) scripts/api-conformance

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

## docs: the man page, the shell completions and the README flag table, generated from
## the command table in src/cli/commands.rs (a test fails while they are out of date)
docs:
	$(CARGO) run --quiet --example docs

## install: BIN (run `make static` first), the systemd units, the man page, the shell
## completions, the docs and the example config (kept if present) under
## DESTDIR/PREFIX; then the groups plexd and plexd-secrets and a random TCP token in
## SYSCONFDIR/plexd/http-token (contrib/plexd-nodeapi-setup). Enables nothing.
install: install-files
	SYSUSERS_CONF=$(DESTDIR)$(SYSUSERSDIR)/plexd-nodeapi.conf \
	  $(DESTDIR)$(LIBEXECDIR)/plexd-nodeapi-setup $(or $(DESTDIR),/)
	@echo "installed; next: edit $(SYSCONFDIR)/plexd/nodeapi.json, then systemctl enable --now plexd-nodeapi"

## install-files: what `install` copies, without touching groups or tokens (`make deb`)
install-files:
	@test -x "$(BIN)" || { echo "$(BIN) does not exist: run make static (or set BIN=)" >&2; exit 1; }
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) \
	  $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(DOCDIR) \
	  $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/plexd
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/plexd-nodeapi
	sed -e 's|/usr/local/bin/plexd-nodeapi|$(BINDIR)/plexd-nodeapi|' \
	    -e 's|/usr/share/doc/plexd-nodeapi|$(DOCDIR)|' \
	    contrib/plexd-nodeapi.service > $(DESTDIR)$(UNITDIR)/plexd-nodeapi.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/plexd-nodeapi.service
	install -m 0644 contrib/plexd-nodeapi.socket $(DESTDIR)$(UNITDIR)/plexd-nodeapi.socket
	install -m 0644 contrib/plexd-nodeapi.sysusers $(DESTDIR)$(SYSUSERSDIR)/plexd-nodeapi.conf
	install -m 0755 contrib/plexd-nodeapi-setup $(DESTDIR)$(LIBEXECDIR)/plexd-nodeapi-setup
	gzip -9n < contrib/man/plexd-nodeapi.1 > $(DESTDIR)$(MANDIR)/man1/plexd-nodeapi.1.gz
	chmod 0644 $(DESTDIR)$(MANDIR)/man1/plexd-nodeapi.1.gz
	install -m 0644 contrib/completions/plexd-nodeapi.bash $(DESTDIR)$(BASHCOMPDIR)/plexd-nodeapi
	install -m 0644 contrib/completions/_plexd-nodeapi $(DESTDIR)$(ZSHCOMPDIR)/_plexd-nodeapi
	install -m 0644 contrib/completions/plexd-nodeapi.fish $(DESTDIR)$(FISHCOMPDIR)/plexd-nodeapi.fish
	install -m 0644 README.md contrib/openapi.json $(DESTDIR)$(DOCDIR)/
	test -e $(DESTDIR)$(SYSCONFDIR)/plexd/nodeapi.json || \
	  install -m 0600 contrib/plexd-nodeapi.json $(DESTDIR)$(SYSCONFDIR)/plexd/nodeapi.json

## deb: dist/plexd-nodeapi_VERSION_ARCH.deb of BIN (built by `make static` if missing;
## TARGET picks the CPU), with dpkg-deb; its postinst creates the groups and a token
deb:
	@test -x "$(BIN)" || CARGO=$(CARGO) scripts/build-target $(TARGET) static
	BIN=$(BIN) TARGET=$(TARGET) scripts/deb

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf .plexd-dev dist fuzz/target
