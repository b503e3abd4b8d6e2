# Liquid Metal: flintlockd, fl and their tests. Run as root on Debian 12.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)

.PHONY: all deps build generate verify-generate lint test test-unit e2e fuzz bench demo demo-down clean

all: build

deps: ## Debian packages and cached tool builds
	@hack/install-deps.sh
	@hack/build-registry.sh
	@hack/build-kube.sh
	@hack/build-capi.sh

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

generate: ## regenerate committed code (protobuf, CAPMVM deepcopy and CRDs)
	hack/generate-proto.sh
	hack/generate-crds.sh

verify-generate:
	$(GO) test -count=1 ./api/...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Every test: unit, integration (real containerd, registry, QEMU, netns) and e2e.
test: deps build
	hack/test.sh

bench: deps build
	hack/bench.sh

fuzz:
	hack/fuzz.sh

demo: deps build
	hack/demo.sh

demo-down:
	hack/demo.sh down

clean:
	rm -rf $(BIN)/flintlockd $(BIN)/fl
