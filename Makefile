# Vigil. `make demo` and `make test` work on a fresh Debian machine as root.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
TOOLS := $(CURDIR)/.bin
export PATH := $(TOOLS):$(PATH)

BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2

# Every package's tests run with -race: the whole suite takes about 4
# minutes that way on 2 cores, well inside TEST_TIMEOUT.
TEST_TIMEOUT ?= 15m
TEST_FLAGS ?= -race -count=1
FUZZTIME ?= 30s

# Release build flags. The grpcnotrace tag keeps grpc from linking
# golang.org/x/net/trace, whose html/template import makes the linker keep
# every exported method of every reachable type: about 5 MB more binary,
# and on kernels that map page-cache folios whole, about 3 MiB more RSS per
# agent (docs/benchmarks.md#agent-memory). internal/testenv.BuildFlags is
# the same list for the tests that build the binaries.
GO_BUILD_FLAGS := -trimpath -tags grpcnotrace
# VERSION is what every binary's --version prints (and the agent reports
# upstream): the tag or commit of the tree, "-dirty" with local changes.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO_LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build image tools gen lint test test-unit prereqs fuzz bench demo demo-down clean

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build $(GO_BUILD_FLAGS) -ldflags "$(GO_LDFLAGS)" -o $(BIN)/vigil-agent ./cmd/agent
	CGO_ENABLED=0 $(GO) build $(GO_BUILD_FLAGS) -ldflags "$(GO_LDFLAGS)" -o $(BIN)/vigil-aggregator ./cmd/aggregator
	CGO_ENABLED=0 $(GO) build $(GO_BUILD_FLAGS) -ldflags "$(GO_LDFLAGS)" -o $(BIN)/vigilctl ./cmd/vigilctl

# image: one reproducible OCI image layout tarball per binary under
# bin/images (no Docker, no registry): `ctr -n k8s.io images import
# bin/images/vigil-agent.tar`, `podman load`, `skopeo copy oci-archive:...`.
# IMAGE_REPO and IMAGE_TAG name them. deploy/docker has Dockerfiles for
# those who build with Docker.
IMAGE_REPO ?= ghcr.io/vigilhq
IMAGE_TAG ?= dev
image: build
	$(GO) run ./cmd/vigil-image -bin $(BIN) -out $(BIN)/images -repo $(IMAGE_REPO) -tag $(IMAGE_TAG)

$(TOOLS)/buf:
	GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

tools: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc

gen: tools
	buf generate

# lint: formatting, vet, buf lint, and generated code that matches the .proto.
lint: tools prereqs
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@big=$$(git ls-files -z | xargs -0 stat -c '%s %n' 2>/dev/null | awk '$$1 > 1048576 {print $$2}'); \
	  if [ -n "$$big" ]; then echo "files over 1 MiB are tracked (a binary built in the tree?):"; echo "$$big"; exit 1; fi
	buf lint
	@if command -v kubectl >/dev/null; then kubectl kustomize deploy/daemonset >/dev/null && echo "deploy/daemonset renders"; \
	  else echo "kubectl not installed: deploy/daemonset not checked (make prereqs installs it)"; fi
	@if command -v promtool >/dev/null; then promtool check config deploy/prometheus/prometheus.yml deploy/prometheus/prometheus-sharded.yml >/dev/null && echo "deploy/prometheus configs are valid"; fi
	buf generate
	@if [ -n "$$(git status --porcelain -- proto)" ]; then \
	  echo "generated code is stale or uncommitted: run 'make gen' and commit"; git status --short -- proto; exit 1; fi

prereqs:
	@bash scripts/install-prereqs.sh

# test: installs prerequisites, then every unit and integration test.
test: prereqs
	$(GO) test $(TEST_FLAGS) -timeout $(TEST_TIMEOUT) ./...

test-unit:
	$(GO) test -short -count=1 ./...

# fuzz: each fuzz target for FUZZTIME (seeds alone run in `make test`).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; done

bench: prereqs
	@bash scripts/bench.sh

demo: prereqs build
	@bash scripts/demo.sh up

demo-down:
	@bash scripts/demo.sh down

clean:
	rm -rf $(BIN)
