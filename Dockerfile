# syntax=docker/dockerfile:1
#
# Two small static images from one Dockerfile, each a target:
#   envoy-keypool  (default)  docker build -t envoy-keypool .
#   mock-provider             docker build --target mock-provider -t mock-provider .
# The mock provider is a test double: it never ships inside the product image.
# Both run as the distroless "nonroot" user (uid 65532) with no shell.

FROM golang:1.26 AS build
WORKDIR /src
ENV CGO_ENABLED=0
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .

FROM build AS build-envoy-keypool
# The version `envoy-keypool version` reports: docker build --build-arg VERSION=$(git describe --tags)
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath \
      -ldflags="-s -w -X github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/app.Version=${VERSION}" \
      -o /out/envoy-keypool ./cmd/envoy-keypool

FROM build AS build-mock-provider
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags="-s -w" -o /out/mock-provider ./internal/cmd/mock-provider

FROM gcr.io/distroless/static-debian12:nonroot AS mock-provider
COPY --from=build-mock-provider /out/mock-provider /usr/local/bin/mock-provider
USER nonroot:nonroot
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/mock-provider"]
CMD ["--listen", ":8080"]

# Last, so that a plain `docker build .` builds the product.
FROM gcr.io/distroless/static-debian12:nonroot AS envoy-keypool
COPY --from=build-envoy-keypool /out/envoy-keypool /usr/local/bin/envoy-keypool
USER nonroot:nonroot
# 9001: ext_proc and gRPC health (for Envoy); 9002: /metrics, /healthz, /readyz, key API.
EXPOSE 9001 9002
ENTRYPOINT ["/usr/local/bin/envoy-keypool"]
# Mount the config here; its secrets come from the environment or mounted files.
CMD ["serve", "--config", "/etc/envoy-keypool/config.yaml"]
