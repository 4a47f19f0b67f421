// Package config reads the envoy-keypool configuration file: one YAML document with
// the listeners, the state backend and the pools. Unknown fields are errors, every
// problem is reported at once with the path of the field it is about, and secrets
// (key values, the admin token, the Redis password) are read from environment
// variables or files, never written in the file itself.
//
// The package turns the file into values of the domain (keypool) and the names
// the Envoy configuration must agree on; it knows nothing of gRPC or Redis clients.
package config
