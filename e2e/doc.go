// Package e2e holds the end-to-end tests: the real envoy-keypool binary (two
// replicas), a real redis-server, the Envoy stand-in running the shipped compose
// Envoy configuration, and the mock provider, driven from outside by the official
// openai-go and anthropic-sdk-go clients.
//
// By default the tests start that chain on this machine (package stack). With
// KEYPOOL_E2E_TARGET=compose they run against a `docker compose up` stack instead
// (see `make e2e-compose`); tests that need to start or kill parts use
// `docker compose` for it.
package e2e
