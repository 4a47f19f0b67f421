package envoy

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"github.com/envoy-keypool/envoy-keypool/config"
)

// CheckKeypool reports where bs does not run envoy-keypool as cfg expects it; the
// error joins one *Problem per finding, each naming its field. It follows every route
// to a cluster whose upstream filters hold an envoy-keypool ext_proc filter (one
// naming a pool through cfg's pool_metadata_key initial metadata) and checks, each
// where Envoy reads it:
//
//   - the filter: request and response headers SEND, bodies NONE, failure_mode_allow
//     false, a message_timeout above envoy-keypool's Redis timeout, the pool named once
//     and known to cfg, mode override allowed for the failure body mode, and a stream
//     retry policy that can move a stream to another replica within message_timeout;
//   - the retry policy in force (the cluster's, else the route's, else the virtual
//     host's): the marker retried, num_retries at least the pool's size, and no
//     condition that retries what the provider may have run and billed (5xx, resets
//     after the request left, other statuses), nor a condition Envoy does not know
//     (Envoy ignores those silently: retry_state_impl.cc parseRetryOn);
//   - the route and virtual host: the body buffered for replay, x-envoy-attempt-count
//     sent, the marker removed from responses;
//   - the provider cluster: circuit breakers that let every request in flight retry at
//     once, an idle timeout below the provider's keep-alive, TLS with the provider's
//     name checked for an https upstream;
//   - the connection manager: x-request-id Envoy's own for every client, envoy-keypool
//     not in the downstream chain, json_to_metadata not able to answer 413;
//   - the envoy-keypool cluster: health checked, the replicas cfg names, HTTP/2
//     keepalive, a connect timeout inside message_timeout, room for one stream per
//     provider request in flight and for all of them to retry, TLS as cfg says;
//
// and that every pool of cfg has a route, and that no cluster reaches a pool's
// provider without envoy-keypool.
func CheckKeypool(bs *bootstrapv3.Bootstrap, cfg *config.Config) error {
	return (&EnvoyConfig{Bootstrap: bs}).CheckKeypool(cfg)
}

// CheckKeypool is the package's CheckKeypool for c.
func (c *EnvoyConfig) CheckKeypool(cfg *config.Config) error {
	k := &keypoolChecker{
		ix:        index(c.Bootstrap, c.Routes),
		cfg:       cfg,
		done:      map[string]bool{},
		routed:    map[string]bool{},
		keypool:   map[string]*keypoolUse{},
		withProcs: map[string]bool{},
	}
	for _, h := range k.ix.hcms {
		k.checkHCM(h)
	}
	k.checkKeypoolClusters()
	k.checkUncovered()
	return errors.Join(append(k.ix.problems, k.errs...)...)
}

type keypoolChecker struct {
	ix   *bootstrapIndex
	cfg  *config.Config
	errs []error
	// done holds the paths already checked (a filter, cluster or virtual host reached
	// by several routes is checked once).
	done map[string]bool
	// routed holds the pools some route reaches through their filter.
	routed map[string]bool
	// keypool holds, per envoy-keypool cluster, what its checks need.
	keypool map[string]*keypoolUse
	// withProcs holds the provider clusters reached with an envoy-keypool filter.
	withProcs map[string]bool
	// providerRequests sums the max_requests of those provider clusters.
	providerRequests int
	unresolvedRDS    int
}

// keypoolUse is what the filters naming an envoy-keypool cluster ask of it.
type keypoolUse struct {
	minMessageTimeout time.Duration
	streamRetries     bool
}

func (k *keypoolChecker) add(p *Problem) { k.errs = append(k.errs, p) }

func (k *keypoolChecker) once(p fieldPath) bool {
	if k.done[p.String()] {
		return false
	}
	k.done[p.String()] = true
	return true
}

// isKeypool reports whether f is an envoy-keypool ext_proc filter: one naming a pool
// through the pool metadata key. Other ext_proc filters (Envoy AI Gateway's, say) may
// share the chain.
func (k *keypoolChecker) isKeypool(f filterEntry) bool {
	if f.extProc == nil {
		return false
	}
	for _, hv := range f.extProc.GetGrpcService().GetInitialMetadata() {
		if strings.EqualFold(hv.GetKey(), k.cfg.Envoy.PoolMetadataKey) {
			return true
		}
	}
	return false
}

func (k *keypoolChecker) checkHCM(h *hcmEntry) {
	for _, f := range h.filters {
		if k.isKeypool(f) {
			k.add(f.path.problem("envoy-keypool's ext_proc filter in the downstream chain sees one stream per request, not one per attempt: key failover cannot work; put it in the provider cluster's upstream filters (%s http_filters)", keyHTTPOptions))
		}
	}
	if h.table == nil {
		if h.hcm.GetRds() != nil {
			k.unresolvedRDS++
		}
		return
	}
	reaches := false
	for _, r := range h.routes() {
		for _, name := range routeClusters(r.route) {
			cl, ok := k.ix.cluster(name)
			if !ok {
				continue // CheckLoad's
			}
			chain := h.upstream
			if cl.options != nil && cl.options.GetHttpFilters() != nil {
				chain = cl.filters
			}
			var procs []filterEntry
			for _, f := range chain {
				if k.isKeypool(f) {
					procs = append(procs, f)
				}
			}
			if len(procs) == 0 {
				continue
			}
			reaches = true
			k.withProcs[name] = true
			if len(procs) > 1 {
				if k.once(procs[1].path) {
					k.add(procs[1].path.problem("a second envoy-keypool ext_proc filter in the chain (the first is %s): each would pick and inject a key", procs[0].path.field))
				}
				continue
			}
			pool := k.checkFilter(procs[0])
			if pool == nil {
				continue
			}
			k.routed[pool.Name] = true
			k.checkPerRoute(h, r, procs[0].filter.GetName())
			k.checkRetry(r, cl, pool)
			k.checkRoute(h, r)
			k.checkProviderCluster(cl, pool)
		}
	}
	if reaches && k.once(h.path) {
		k.checkRequestID(h)
		k.checkModelFilter(h)
	}
}

// checkUncovered reports pools without a route, and clusters that reach a pool's
// provider without envoy-keypool (their requests leave with no pool key).
func (k *keypoolChecker) checkUncovered() {
	hosts := map[string][]string{}
	for i, p := range k.cfg.Pools {
		if u, err := url.Parse(p.Route.Upstream); err == nil && u.Hostname() != "" {
			hosts[u.Hostname()] = append(hosts[u.Hostname()], p.Name)
		}
		if !k.routed[p.Name] {
			msg := fmt.Sprintf("pool %q has no route to a cluster whose envoy-keypool filter names it", p.Name)
			if k.unresolvedRDS > 0 {
				msg += fmt.Sprintf(" (%d connection managers take their routes from RDS, which this configuration does not hold: check Envoy's /config_dump instead)", k.unresolvedRDS)
			}
			// Nothing in Envoy to name: the field is the envoy-keypool config's pool.
			k.add(&Problem{Path: fmt.Sprintf("envoy-keypool config: pools[%d]", i), Message: msg})
		}
	}
	for _, cl := range k.ix.clusters {
		if k.withProcs[cl.cluster.GetName()] || k.keypool[cl.cluster.GetName()] != nil {
			continue
		}
		for _, lle := range cl.cluster.GetLoadAssignment().GetEndpoints() {
			for _, lbe := range lle.GetLbEndpoints() {
				host := lbe.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
				if pools, ok := hosts[host]; ok && k.once(cl.path.f("load_assignment")) {
					k.add(cl.path.f("load_assignment").problem("reaches %s, the upstream of pool %s, without an envoy-keypool filter: its requests leave with no pool key", host, strings.Join(quoteAll(pools), ", ")))
				}
			}
		}
	}
}
