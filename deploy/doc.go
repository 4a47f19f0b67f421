// Package deploy holds what envoy-keypool ships for running it where Envoy already
// runs, and the tests that keep it correct:
//
//   - kubernetes/: a kustomize base (two replicas, keys from a Secret mounted as
//     files, probes, PodDisruptionBudget, non-root with a read-only root filesystem)
//     and an overlay adding a shared Redis;
//   - helm/envoy-keypool/: a Helm chart with the same content, its pools, key Secret
//     references, Redis, replicas and resources as values;
//   - examples/: envoy-keypool in Istio (EnvoyFilter on a ServiceEntry's cluster), in
//     Envoy Gateway (EnvoyPatchPolicy on a Backend's cluster) and in front of Envoy AI
//     Gateway's upstream filter;
//   - grafana/: a Grafana dashboard over envoy-keypool's metrics.
//
// It is a Go module of its own so that kustomize, Helm and the Kubernetes, Istio and
// Envoy Gateway API types stay out of the product's go.mod. It has no code that
// ships: the tests render every manifest, chart template and example through
// kustomize's and Helm's Go libraries, decode each object strictly into the real API
// types (an unknown or misspelt field fails), and put every Envoy configuration
// fragment through the checks of package envoy (go-control-plane's types, Envoy's
// load-time rules, CheckKeypool) on a model of the configuration the mesh or gateway
// generates with the fragments applied.
package deploy
