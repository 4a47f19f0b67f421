// Package envoy holds the Envoy configuration that envoy-keypool ships to users and
// the code that reads, checks and generates it.
//
// Every Envoy YAML in the repository is loaded through go-control-plane's typed
// Bootstrap, so a field Envoy would reject at load time fails a test here, even
// though no Envoy binary runs on the machines this project is built on.
package envoy
