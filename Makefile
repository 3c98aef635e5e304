# ember — see README.md. `make run` and `make test` install what is missing.
GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
EMBER   := bin/ember
TESTFLAGS ?=

.PHONY: all build deps images minimal run test unit e2e fuzz lint bench clean

all: build

# Static, without libc: nothing in ember needs cgo, and a VMM process that
# maps no C library is smaller. The guest init goes into every image
# without its symbol table and DWARF (-s -w; panics still name functions):
# 1.8 MB less for ember to copy and the guest to unpack at every boot.
build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/ember ./cmd/ember
	CGO_ENABLED=0 $(GO) build -o bin/ember-vmm ./cmd/ember-vmm
	CGO_ENABLED=0 $(GO) build -ldflags '-s -w' -o bin/ember-init ./guest/init

# Host packages: apt-get download/dpkg for kernels, QEMU for --accel nested
# on hosts whose /dev/kvm is missing or unusable.
deps:
	@./.ci/deps

images: build deps
	$(EMBER) images fetch

# ember's minimal kernel, built from Debian's kernel source once per cache
# (minutes); the device tests boot it too.
minimal: build
	$(EMBER) images kernel --minimal

run: images
	$(EMBER) run

# Unit tests and fuzz seed corpora, then end-to-end tests that boot real
# kernels (on /dev/kvm, or inside one nested L1 guest for the whole suite).
test: images minimal unit e2e

unit:
	$(GO) vet ./...
	$(GO) test -race $(TESTFLAGS) $$($(GO) list ./... | grep -v /tests)

# The whole-suite bound leaves room for L1's own 25-minute limit, one
# retry in a fresh L1 and the host-side tests, on a slow emulated host.
e2e: build
	$(GO) test $(TESTFLAGS) -count=1 -timeout 60m -v ./tests/

lint:
	test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

fuzz:
	./.ci/fuzz 30s

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m ./tests/

clean:
	rm -rf bin
