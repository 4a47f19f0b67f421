# envoy-keypool
GO      ?= go
CONFIG  ?= config/example.yaml
BIN     := bin
PKGS    := ./...
# The version `envoy-keypool version` reports, set at build time.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/app.Version=$(VERSION)

# Placeholder keys for `make run` and `make demo`: obviously fake, never real.
export OPENAI_API_KEY_1          ?= demo-openai-key-1-not-real
export OPENAI_API_KEY_2          ?= demo-openai-key-2-not-real
export ANTHROPIC_API_KEY_1       ?= demo-anthropic-key-1-not-real
export ANTHROPIC_API_KEY_2       ?= demo-anthropic-key-2-not-real
export ENVOY_KEYPOOL_ADMIN_TOKEN ?= demo-admin-token

.PHONY: all build run test fuzz bench soak lint envoy-config demo e2e-compose clean

all: build

## build: the envoy-keypool binary and the test tools (Envoy stand-in, mock provider) into bin/
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/... ./internal/cmd/...

## run: serve the example configuration with in-memory state and placeholder keys
run:
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/envoy-keypool serve --config $(CONFIG)

## test: every test (unit, fuzz seed corpora, Redis, end-to-end, and the deploy/ module) under the race detector
# vet runs with -race so that it shares the race-instrumented build of the dependencies
# with the tests (a plain vet compiles them all a second time: ~40 % of a cold run).
test:
	$(GO) vet -race $(PKGS)
	$(GO) test -race -count=1 -timeout 20m $(PKGS)
	@if [ -f deploy/go.mod ]; then echo "== deploy/ (its own module)"; cd deploy && $(GO) vet -race ./... && $(GO) test -race -count=1 -timeout 10m ./...; fi

## fuzz: run each fuzz target for FUZZTIME (default 30s)
FUZZTIME ?= 30s
fuzz:
	@$(GO) list -f '{{.ImportPath}} {{.Dir}}' $(PKGS) | while read pkg dir; do \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | cut -d' ' -f2); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

## bench: the figures of BENCHMARKS.md in one batch: the Go benchmarks, then the real binary
## under load against the pass-through ext_proc (in memory and on Redis, healthy and 10 % failing
## over, 32 and 256 streams), servers and load tool pinned to one CPU each; report in bin/bench.md
BENCH_PKGS     ?= ./extproc/ ./keypool/ ./keypool/redisstate/ ./providers/
BENCH_COUNT    ?= 5
BENCH_ROUNDS   ?= 5
BENCH_DURATION ?= 5s
bench: build
	{ $(GO) test -run '^$$' -bench . -benchmem -count $(BENCH_COUNT) $(BENCH_PKGS) || echo "FAIL: go test -bench"; } 2>&1 | tee $(BIN)/bench-go.txt
	$(BIN)/keypool-load bench --keypool-bin $(BIN)/envoy-keypool --go-results $(BIN)/bench-go.txt \
	  --rounds $(BENCH_ROUNDS) --duration $(BENCH_DURATION) --json $(BIN)/bench.json > $(BIN)/bench.md
	@cat $(BIN)/bench.md

## soak: load one envoy-keypool for SOAK_DURATION (default 10m; SOAK_STATE memory or redis) and
## plot its RSS, goroutines and p99 over time to bin/soak.svg (not part of CI)
SOAK_DURATION ?= 10m
SOAK_STATE    ?= memory
soak: build
	$(BIN)/keypool-load soak --keypool-bin $(BIN)/envoy-keypool --state $(SOAK_STATE) --duration $(SOAK_DURATION) \
	  --plot $(BIN)/soak.svg --json $(BIN)/soak.json

## lint: vet and formatting
lint:
	$(GO) vet $(PKGS)
	cd deploy && $(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

## envoy-config: regenerate the shipped Envoy configurations from their envoy-keypool configurations
envoy-config:
	$(GO) test ./envoy/ -run TestShippedConfigsAreGenerated -update

## demo: the whole chain on this machine without Docker, with a key that answers 429
demo: build
	$(BIN)/keypool-demo --keypool-bin $(BIN)/envoy-keypool

## e2e-compose: the end-to-end suite against a running `docker compose up` stack (needs Docker)
e2e-compose:
	KEYPOOL_E2E_TARGET=compose $(GO) test -count=1 -v ./e2e/

clean:
	rm -rf $(BIN)
