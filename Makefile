# server-starter: build, test, install.
#
#   make                 static musl start_server, libserver_starter.{a,so}, the header
#   make test            every test (what CI runs)
#   make examples-c      the C examples (what the quick start runs), built against an
#                        installed copy of the library staged in build/stage (see below)
#   make examples        the C, Python and Go examples (Go needs golang-go)
#   make scratch         start_server and build/examples/http-scratch, a worker with
#                        libc linked in: what contrib/docker/Dockerfile ships
#   make deb             build/deb/server-starter_<version>_amd64.deb (contrib/debian/)
#   make install PREFIX=/usr/local DESTDIR=      copies what `make` built (no cargo)
#   make uninstall PREFIX=/usr/local DESTDIR=    removes exactly what install put there

PREFIX  ?= /usr/local
DESTDIR ?=
CARGO   ?= cargo
CC      ?= cc
GO      ?= go
PKG_CONFIG ?= pkg-config
MUSL    := x86_64-unknown-linux-musl

BINDIR        = $(PREFIX)/bin
LIBDIR        = $(PREFIX)/lib
INCLUDEDIR    = $(PREFIX)/include
PKGCONFIGDIR  = $(LIBDIR)/pkgconfig
MANDIR        = $(PREFIX)/share/man

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
MAJOR   := $(word 1,$(subst ., ,$(VERSION)))

BIN     := target/$(MUSL)/release/start_server
LIBA    := target/release/libserver_starter.a
LIBSO   := target/release/libserver_starter.so
HEADER  := include/server_starter.h
# Every page under man/, by section.
MAN1    := $(wildcard man/*.1)
MAN3    := $(wildcard man/*.3)
# Each function server_starter(3) documents gets a page of its name that points
# there, so that `man server_starter_notify`, which start_server(1) cites, works.
MAN3_FUNCS := server_starter_listeners server_starter_find server_starter_parse \
              server_starter_generation server_starter_notify server_starter_strerror \
              server_starter_version

SONAME  := libserver_starter.so.$(MAJOR)
SOFILE  := libserver_starter.so.$(VERSION)

.PHONY: all bin lib header test examples examples-c examples-go examples-python scratch stage \
        install uninstall clean bench deb

all: bin lib

# The static start_server is built with std compiled from source (rustup component
# rust-src) without std's `backtrace` feature, which brings in a DWARF symbolizer
# (gimli, addr2line, miniz_oxide, libunwind: 300 KB of the binary) used only to
# print a backtrace after a panic. A panic still prints its message; `cargo build`
# alone still builds the same program on stable Rust, only bigger. -Z on the stable
# toolchain needs RUSTC_BOOTSTRAP=1, given to this one command (DESIGN.md, "Size").
BUILD_STD := -Z build-std=std,panic_abort -Z build-std-features=optimize_for_size

bin:
	RUSTC_BOOTSTRAP=1 $(CARGO) build --release --locked --target $(MUSL) --bin start_server $(BUILD_STD)

# The C library is built without std (core and libc only): a tenth of the size,
# and nothing to link but libc.
lib:
	$(CARGO) build --release --locked --lib --no-default-features

# Regenerate the committed header from src/ffi.rs.
header:
	SERVER_STARTER_UPDATE_HEADER=1 $(CARGO) build --lib

test: all examples
	START_SERVER=$(CURDIR)/$(BIN) $(CARGO) test --locked --no-fail-fast -- --test-threads=8

# Side-by-side benchmarks against the Perl original (installed from Debian when
# missing); prints one markdown table, also kept in build/bench/results.md.
bench: all examples
	START_SERVER=$(CURDIR)/$(BIN) EXAMPLES=$(EXAMPLES) python3 bench/run.py

# Two pkg-config modules: server_starter links the .so, server_starter-static the
# .a (pkg-config --static cannot make -lserver_starter pick the archive over the
# .so beside it).
PC_MODULES := server_starter server_starter-static

# install copies what `make` built and builds nothing: `sudo make install` must
# work where sudo's PATH has no cargo. The .pc files bake in PREFIX, so they are
# written by every install (the staged install and a real one differ), straight
# into DESTDIR: installs to different places may run at once (the tests do).
install:
	@for f in $(BIN) $(LIBA) $(LIBSO); do \
	  [ -f "$$f" ] || { echo "make install: $$f is not built: run \`make\` first (as yourself, not root)" >&2; exit 1; }; \
	done
	install -d '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(LIBDIR)' '$(DESTDIR)$(INCLUDEDIR)' \
	           '$(DESTDIR)$(PKGCONFIGDIR)' '$(DESTDIR)$(MANDIR)/man1'
	for m in $(PC_MODULES); do \
	  sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	      -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	      $$m.pc.in > '$(DESTDIR)$(PKGCONFIGDIR)/'$$m.pc && \
	  chmod 644 '$(DESTDIR)$(PKGCONFIGDIR)/'$$m.pc || exit 1; \
	done
	install -p -m 755 $(BIN) '$(DESTDIR)$(BINDIR)/start_server'
	install -p -m 644 $(LIBA) '$(DESTDIR)$(LIBDIR)/libserver_starter.a'
	# cargo's strip does not reach static libraries: the debug info of core is most
	# of it. The rustc banners (.comment) go too, as Debian's dh_strip does.
	strip --strip-debug --remove-section=.comment '$(DESTDIR)$(LIBDIR)/libserver_starter.a'
	install -p -m 755 $(LIBSO) '$(DESTDIR)$(LIBDIR)/$(SOFILE)'
	ln -sf $(SOFILE) '$(DESTDIR)$(LIBDIR)/$(SONAME)'
	ln -sf $(SONAME) '$(DESTDIR)$(LIBDIR)/libserver_starter.so'
	install -p -m 644 $(HEADER) '$(DESTDIR)$(INCLUDEDIR)/server_starter.h'
	install -p -m 644 $(MAN1) '$(DESTDIR)$(MANDIR)/man1/'
	if [ -n '$(MAN3)' ]; then \
	  install -d '$(DESTDIR)$(MANDIR)/man3' && \
	  install -p -m 644 $(MAN3) '$(DESTDIR)$(MANDIR)/man3/'; \
	fi
	for f in $(MAN3_FUNCS); do \
	  printf '.so man3/server_starter.3\n' > '$(DESTDIR)$(MANDIR)/man3/'$$f.3 && \
	  chmod 644 '$(DESTDIR)$(MANDIR)/man3/'$$f.3 || exit 1; \
	done
	@# The dynamic linker finds a new library only once its cache is rebuilt.
	@if [ -z '$(DESTDIR)' ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo ldconfig; ldconfig; \
	  else echo "make install: run \`sudo ldconfig\` (or set LD_LIBRARY_PATH=$(LIBDIR)) so that programs find libserver_starter.so"; fi; \
	fi

uninstall:
	rm -f '$(DESTDIR)$(BINDIR)/start_server' \
	      '$(DESTDIR)$(LIBDIR)/libserver_starter.a' \
	      '$(DESTDIR)$(LIBDIR)/$(SOFILE)' \
	      '$(DESTDIR)$(LIBDIR)/$(SONAME)' \
	      '$(DESTDIR)$(LIBDIR)/libserver_starter.so' \
	      '$(DESTDIR)$(INCLUDEDIR)/server_starter.h' \
	      '$(DESTDIR)$(PKGCONFIGDIR)/server_starter.pc' \
	      '$(DESTDIR)$(PKGCONFIGDIR)/server_starter-static.pc' \
	      $(foreach p,$(MAN1),'$(DESTDIR)$(MANDIR)/man1/$(notdir $(p))') \
	      $(foreach p,$(MAN3),'$(DESTDIR)$(MANDIR)/man3/$(notdir $(p))') \
	      $(foreach f,$(MAN3_FUNCS),'$(DESTDIR)$(MANDIR)/man3/$(f).3')

# ---------------------------------------------------------------------------
# Examples, built the way a user would build them: against an installed
# library, found through pkg-config. The install is staged under build/stage
# with PREFIX=/usr, and PKG_CONFIG_SYSROOT_DIR maps the .pc file's /usr paths
# into the stage.

STAGE        := $(CURDIR)/build/stage
STAGE_PREFIX := /usr
STAGE_LIBDIR  = $(STAGE)$(STAGE_PREFIX)/lib
EXAMPLES     := $(CURDIR)/build/examples
PKG_ENV       = PKG_CONFIG_PATH='$(STAGE_LIBDIR)/pkgconfig' PKG_CONFIG_LIBDIR='$(STAGE_LIBDIR)/pkgconfig' \
                PKG_CONFIG_SYSROOT_DIR='$(STAGE)'
EXAMPLE_CFLAGS ?= -O2 -Wall -Wextra -Werror -std=c11
# --gc-sections keeps only the parts of libserver_starter.a's core and
# compiler-builtins objects that are used; -s drops their debug info.
EXAMPLE_LDFLAGS ?= -Wl,--gc-sections -s

C_EXAMPLES := echo http
C_OUTPUTS  := $(foreach e,$(C_EXAMPLES),build/examples/$(e)-static build/examples/$(e)-shared) \
              build/examples/http-scratch

# Each kind on its own, so that the C examples (the quick start) need no Go.
examples: examples-c examples-python examples-go

examples-c: stage
	$(MAKE) --no-print-directory $(C_OUTPUTS)

examples-python: stage
	$(MAKE) --no-print-directory build/examples/python/worker.py

examples-go: stage
	@command -v $(GO) >/dev/null || { echo "make: $(GO) is not installed (apt-get install golang-go); \`make examples-c\` builds the C examples without it" >&2; exit 1; }
	$(MAKE) --no-print-directory build/examples/go-worker

stage: all
	$(MAKE) --no-print-directory install DESTDIR='$(STAGE)' PREFIX=$(STAGE_PREFIX)

STATIC_LIBS = $$($(PKG_ENV) $(PKG_CONFIG) --static --libs server_starter-static)

# Static: libserver_starter.a is linked in, libc and the rest stay shared.
build/examples/%-static: c-examples/%.c c-examples/worker.h $(STAGE_LIBDIR)/libserver_starter.a
	@mkdir -p $(@D)
	$(CC) $(EXAMPLE_CFLAGS) $$($(PKG_ENV) $(PKG_CONFIG) --cflags server_starter) -o $@ $< \
	  $(STATIC_LIBS) $(EXAMPLE_LDFLAGS)

# Scratch: everything linked in, libc too, so that it runs in an empty root (a
# FROM scratch image, see contrib/docker/Dockerfile) beside the static start_server.
build/examples/%-scratch: c-examples/%.c c-examples/worker.h $(STAGE_LIBDIR)/libserver_starter.a
	@mkdir -p $(@D)
	$(CC) $(EXAMPLE_CFLAGS) $$($(PKG_ENV) $(PKG_CONFIG) --cflags server_starter) -o $@ $< \
	  $(STATIC_LIBS) -static $(EXAMPLE_LDFLAGS)

# What contrib/docker/Dockerfile copies into its image: start_server and a worker
# that need nothing else (no Go or Python, unlike `make examples`).
scratch: stage
	$(MAKE) --no-print-directory build/examples/http-scratch

# Shared: found at run time through the rpath, so no LD_LIBRARY_PATH is needed.
build/examples/%-shared: c-examples/%.c c-examples/worker.h $(STAGE_LIBDIR)/$(SOFILE)
	@mkdir -p $(@D)
	$(CC) $(EXAMPLE_CFLAGS) $$($(PKG_ENV) $(PKG_CONFIG) --cflags server_starter) -o $@ $< \
	  $$($(PKG_ENV) $(PKG_CONFIG) --libs server_starter) -Wl,-rpath,'$(STAGE_LIBDIR)' $(EXAMPLE_LDFLAGS)

# Go: offline (no dependencies in go.mod), caches kept under build/.
build/examples/go-worker: c-examples/go/main.go c-examples/go/go.mod $(STAGE_LIBDIR)/$(SOFILE)
	@mkdir -p $(@D) build/go/cache build/go/path
	cd c-examples/go && $(PKG_ENV) CGO_ENABLED=1 GOFLAGS=-mod=mod GOPROXY=off GOTOOLCHAIN=local \
	  GOCACHE='$(CURDIR)/build/go/cache' GOPATH='$(CURDIR)/build/go/path' \
	  CGO_LDFLAGS='-Wl,-rpath,$(STAGE_LIBDIR)' \
	  $(GO) build -o '$(CURDIR)/$@' .

# This copy loads the staged library unless told otherwise, as the C -shared
# examples do through their rpath.
build/examples/python/worker.py: c-examples/python/worker.py $(STAGE_LIBDIR)/$(SOFILE)
	@mkdir -p $(@D)
	sed 's|^BUILT_LIBRARY = None$$|BUILT_LIBRARY = "$(STAGE_LIBDIR)/$(SONAME)"|' $< > $@.tmp
	grep -q '^BUILT_LIBRARY = "' $@.tmp
	chmod 755 $@.tmp && mv $@.tmp $@

# The Debian package, from what `make` built (contrib/debian/build-deb says how).
deb: all
	contrib/debian/build-deb build/deb

clean:
	$(CARGO) clean
	rm -rf build
