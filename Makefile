# Liquid Metal: flintlockd, fl and their tests. Run as root on Debian 12.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)

.PHONY: all deps build generate verify-generate lint test test-unit e2e e2e-kvm fuzz bench demo demo-down clean

all: build

deps: ## Debian packages and cached tool builds
	@hack/install-deps.sh
	@hack/build-registry.sh
	@hack/build-kube.sh
	@hack/build-capi.sh
	@hack/build-kube-node.sh

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

generate: ## regenerate committed code (protobuf, CAPMVM deepcopy and CRDs, cluster templates)
	hack/generate-proto.sh
	hack/generate-crds.sh
	$(MAKE) generate-templates

# templates/ from templates/src, with the CNI manifests rendered from
# cilium's Helm chart and flannel's kube-flannel.yml (hack/cni, own module).
generate-templates:
	cd hack/cni && GOWORK=off $(GO) run . -root ../..

# clusterctl local repository: bin/release/infrastructure-microvm/$(VERSION)/
# and bin/release/clusterctl.yaml (VERSION defaults to v0.1.0).
release-artifacts:
	hack/release-artifacts.sh $(BIN)/release

# Local Cluster API management cluster (processes on loopback, state in
# .mgmt/, kubeconfig .mgmt/kubeconfig); needs bin/capmvm from build.
mgmt-up: build
	hack/mgmt.sh up

mgmt-down:
	hack/mgmt.sh down

verify-generate:
	$(GO) test -count=1 ./api/...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Every test: unit, integration (real containerd, registry, QEMU, netns) and e2e.
test: deps build
	hack/test.sh

# The e2e suite with a real Firecracker or Cloud Hypervisor, on a KVM host
# (docs/kvm-hosts.md): LM_E2E_PROVIDER=firecracker|cloudhypervisor, and
# optionally LM_E2E_FIRECRACKER_BINARY, LM_E2E_JAILER_BINARY,
# LM_E2E_CLOUD_HYPERVISOR_BINARY. The daemons the suite starts read them as
# FLINTLOCKD_* settings. Without usable KVM or the binary it says SKIPPED.
e2e-kvm: build
	@set -e; \
	case "$(LM_E2E_PROVIDER)" in \
	firecracker) bin="$${LM_E2E_FIRECRACKER_BINARY:-firecracker}"; binvar=FLINTLOCKD_FIRECRACKER_BINARY ;; \
	cloudhypervisor) bin="$${LM_E2E_CLOUD_HYPERVISOR_BINARY:-cloud-hypervisor}"; binvar=FLINTLOCKD_CLOUD_HYPERVISOR_BINARY ;; \
	*) echo "e2e-kvm: set LM_E2E_PROVIDER to firecracker or cloudhypervisor" >&2; exit 2 ;; \
	esac; \
	if ! [ -r /dev/kvm ] || ! [ -w /dev/kvm ] || ! grep -qw -e vmx -e svm /proc/cpuinfo; then \
		echo "e2e-kvm: SKIPPED: no usable KVM here (/dev/kvm and the vmx/svm CPU flag are needed; a PVM host does not boot stock kernels)"; exit 0; fi; \
	if ! path="$$(command -v "$$bin")"; then \
		echo "e2e-kvm: SKIPPED: $$bin not found (set LM_E2E_FIRECRACKER_BINARY or LM_E2E_CLOUD_HYPERVISOR_BINARY)"; exit 0; fi; \
	export FLINTLOCKD_DEFAULT_PROVIDER="$(LM_E2E_PROVIDER)" "$$binvar=$$path"; \
	if [ -n "$$LM_E2E_JAILER_BINARY" ]; then \
		export FLINTLOCKD_FIRECRACKER_JAILER="$$LM_E2E_JAILER_BINARY" \
			FLINTLOCKD_FIRECRACKER_JAILER_UID="$${LM_E2E_JAILER_UID:-65534}" FLINTLOCKD_FIRECRACKER_JAILER_GID="$${LM_E2E_JAILER_GID:-65534}" \
			FLINTLOCKD_FIRECRACKER_CHROOT_BASE="$${TMPDIR:-/tmp}/lm-e2e-jailer"; fi; \
	echo "e2e-kvm: provider $(LM_E2E_PROVIDER), $$path"; \
	$(GO) test -count=1 -timeout 60m ./test/e2e/...

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
