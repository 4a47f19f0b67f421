// Package stack starts the whole envoy-keypool chain on one machine without Docker:
// the Envoy stand-in (package internal/standin) running the shipped compose Envoy
// configuration, envoy-keypool replicas as real processes of the built binary, the
// mock provider, and (optionally) a shared Redis given by URL.
//
// The end-to-end tests and `make demo` use it. The configurations are the ones
// users run with docker-compose (envoy/compose/envoy.yaml and keypool.yaml); only
// the addresses are rewritten to free loopback ports, and the key values are fake.
package stack
