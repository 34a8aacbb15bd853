# server-starter: build, test, install.
#
#   make                 static musl start_server, libserver_starter.{a,so}, the header
#   make test            every test (what CI runs)
#   make examples        the C, Go and Python examples, built against build/stage
#   make bench           benchmarks beside the Perl original
#   make install PREFIX=/usr/local DESTDIR=

PREFIX  ?= /usr/local
DESTDIR ?=
CARGO   ?= cargo
MUSL    := x86_64-unknown-linux-musl

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
MAJOR   := $(word 1,$(subst ., ,$(VERSION)))

BIN     := target/$(MUSL)/release/start_server
LIBA    := target/release/libserver_starter.a
LIBSO   := target/release/libserver_starter.so
HEADER  := include/server_starter.h

.PHONY: all bin lib header test examples bench install uninstall clean

all: bin lib

bin:
	$(CARGO) build --release --locked --target $(MUSL) --bin start_server

lib:
	$(CARGO) build --release --locked --lib

# Regenerate the committed header from src/ffi.rs.
header:
	SERVER_STARTER_UPDATE_HEADER=1 $(CARGO) build --lib

test: all examples
	START_SERVER=$(CURDIR)/$(BIN) $(CARGO) test --locked -- --test-threads=8

clean:
	$(CARGO) clean
	rm -rf build
