package deploy

import (
	"bytes"
	"fmt"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/envoy"
)

// workload is what a rendering of the kustomize base, an overlay or the Helm chart
// must hold together: one Deployment of envoy-keypool, its configuration, its
// Service and its PodDisruptionBudget.
type workload struct {
	objs       []object
	deployment *appsv1.Deployment
	container  corev1.Container
	service    *corev1.Service
	cfg        *config.Config
}

// checkWorkload runs the rules every rendering must follow and returns what it found.
// Each t.Run is one rule a user would notice broken.
func checkWorkload(t *testing.T, objs []object) *workload {
	t.Helper()
	w := &workload{objs: objs}
	var deps []*appsv1.Deployment
	for _, d := range find[*appsv1.Deployment](objs) {
		if len(d.Spec.Template.Spec.Containers) > 0 && d.Spec.Template.Spec.Containers[0].Name == "envoy-keypool" {
			deps = append(deps, d)
		}
	}
	if len(deps) != 1 {
		t.Fatalf("%d envoy-keypool Deployments, want 1", len(deps))
	}
	w.deployment = deps[0]
	pod := w.deployment.Spec.Template
	w.container = pod.Spec.Containers[0]
	w.cfg = w.config(t)

	t.Run("the selector matches the pods", func(t *testing.T) {
		sel, err := metav1LabelSelector(w.deployment)
		if err != nil || !sel.Matches(labels.Set(pod.Labels)) {
			t.Errorf("Deployment selector %v does not select its pod labels %v (%v)", w.deployment.Spec.Selector, pod.Labels, err)
		}
	})
	t.Run("every file secret of the config is a mounted Secret key", func(t *testing.T) {
		for _, ref := range fileSecrets(w.cfg) {
			if err := w.secretFileSource(ref); err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("secrets are mounted as directories so rotations reach the process", func(t *testing.T) {
		for _, m := range w.container.VolumeMounts {
			if m.SubPath != "" || m.SubPathExpr != "" {
				t.Errorf("volume mount %q uses subPath: Kubernetes never updates it when the Secret or ConfigMap changes", m.Name)
			}
		}
	})
	t.Run("ports and probes point where the config listens", func(t *testing.T) {
		grpcPort, adminPort := listenPort(t, w.cfg.Listen.GRPC), listenPort(t, w.cfg.Listen.Admin)
		if got := containerPort(w.container, "grpc"); got != grpcPort {
			t.Errorf("container port grpc %d, config listen.grpc %d", got, grpcPort)
		}
		if got := containerPort(w.container, "admin"); got != adminPort {
			t.Errorf("container port admin %d, config listen.admin %d", got, adminPort)
		}
		for _, h := range []string{w.cfg.Listen.GRPC, w.cfg.Listen.Admin} {
			if host, _, _ := net.SplitHostPort(h); host == "127.0.0.1" || host == "localhost" {
				t.Errorf("listen address %s is loopback: nothing outside the pod reaches it", h)
			}
		}
		sp := w.container.StartupProbe
		if sp == nil || sp.GRPC == nil || sp.GRPC.Port != grpcPort {
			t.Errorf("startup probe %+v, want the gRPC health service on port %d", sp, grpcPort)
		}
		w.checkHTTPProbe(t, "liveness", w.container.LivenessProbe, "/healthz", adminPort)
		w.checkHTTPProbe(t, "readiness", w.container.ReadinessProbe, "/readyz", adminPort)
	})
	t.Run("termination grace period covers the drain and the shutdown timeout", func(t *testing.T) {
		need := argDuration(t, w.container.Args, "--drain-delay") + argDuration(t, w.container.Args, "--shutdown-timeout")
		grace := time.Duration(ptrValue(pod.Spec.TerminationGracePeriodSeconds, 30)) * time.Second
		if grace < need+5*time.Second {
			t.Errorf("terminationGracePeriodSeconds %s, want at least drain delay + shutdown timeout + 5s = %s: Kubernetes would kill streams still draining", grace, need+5*time.Second)
		}
	})
	t.Run("runs as non-root with a read-only root filesystem", func(t *testing.T) {
		psc, sc := pod.Spec.SecurityContext, w.container.SecurityContext
		if psc == nil || !ptrValue(psc.RunAsNonRoot, false) {
			t.Error("pod securityContext.runAsNonRoot is not true")
		}
		if sc == nil || !ptrValue(sc.ReadOnlyRootFilesystem, false) || ptrValue(sc.AllowPrivilegeEscalation, true) {
			t.Errorf("container securityContext %+v: want readOnlyRootFilesystem true, allowPrivilegeEscalation false", sc)
		}
		if sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Error("container does not drop ALL capabilities")
		}
		if ptrValue(pod.Spec.AutomountServiceAccountToken, true) {
			t.Error("the service account token is mounted: envoy-keypool never talks to the Kubernetes API")
		}
	})
	t.Run("resource requests are set", func(t *testing.T) {
		r := w.container.Resources.Requests
		if r.Cpu().IsZero() || r.Memory().IsZero() {
			t.Errorf("requests %v: want cpu and memory", r)
		}
	})
	t.Run("a headless Service reaches every replica", func(t *testing.T) {
		w.service = w.findService(t, pod.Labels)
		if w.service.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("Service %s clusterIP %q: want None, so that Envoy's STRICT_DNS cluster sees every replica", w.service.Name, w.service.Spec.ClusterIP)
		}
		if w.service.Spec.PublishNotReadyAddresses {
			t.Error("Service publishes not-ready addresses: draining replicas would keep receiving streams")
		}
		for _, p := range w.service.Spec.Ports {
			if p.TargetPort.Type == intstr.String && containerPort(w.container, p.TargetPort.StrVal) == 0 {
				t.Errorf("Service port %s targets %q, which the container does not name", p.Name, p.TargetPort.StrVal)
			}
		}
	})
	t.Run("Envoy is told the Service's address", func(t *testing.T) {
		if w.service == nil {
			t.Skip("no Service")
		}
		want := net.JoinHostPort(fmt.Sprintf("%s.%s.svc.cluster.local", w.service.Name, w.service.Namespace),
			strconv.Itoa(int(listenPort(t, w.cfg.Listen.GRPC))))
		if !slices.Equal(w.cfg.Envoy.KeypoolAddresses, []string{want}) {
			t.Errorf("envoy.keypool_addresses %v, want [%s]: the generated Envoy configuration would not find the replicas", w.cfg.Envoy.KeypoolAddresses, want)
		}
	})
	t.Run("a disruption budget keeps a replica serving", func(t *testing.T) {
		var pdbs []*policyv1.PodDisruptionBudget
		for _, p := range find[*policyv1.PodDisruptionBudget](objs) {
			if sel, err := metav1AsSelector(p.Spec.Selector); err == nil && sel.Matches(labels.Set(pod.Labels)) {
				pdbs = append(pdbs, p)
			}
		}
		replicas := ptrValue(w.deployment.Spec.Replicas, 1)
		if replicas < 2 {
			return // nothing to keep: a single replica is a choice of the values
		}
		if len(pdbs) != 1 {
			t.Fatalf("%d PodDisruptionBudgets select the pods, want 1", len(pdbs))
		}
		mu := pdbs[0].Spec.MaxUnavailable
		if mu == nil || mu.IntValue() < 1 || int32(mu.IntValue()) >= replicas {
			t.Errorf("maxUnavailable %v with %d replicas: want at least 1 (drains can proceed) and below the replica count", mu, replicas)
		}
	})
	t.Run("only labelled clients reach the ext_proc port", func(t *testing.T) {
		checkExtProcIngress(t, objs, pod.Labels, listenPort(t, w.cfg.Listen.GRPC))
	})
	t.Run("the configuration generates a valid Envoy configuration", func(t *testing.T) {
		bs, err := envoy.Generate(w.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := envoy.ValidateDeep(bs); err != nil {
			t.Fatal(err)
		}
		if err := envoy.CheckLoad(bs); err != nil {
			t.Fatal(err)
		}
		if err := envoy.CheckKeypool(bs, w.cfg); err != nil {
			t.Fatal(err)
		}
	})
	return w
}

// config parses the envoy-keypool configuration the Deployment mounts, as
// `envoy-keypool validate` would (without reading its secrets, which are files in
// the pod).
func (w *workload) config(t *testing.T) *config.Config {
	t.Helper()
	file := ""
	for _, a := range w.container.Args {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			file = v
		}
	}
	if file == "" {
		t.Fatalf("container args %v name no --config=FILE", w.container.Args)
	}
	src, err := w.volumeSource(path.Dir(file))
	if err != nil {
		t.Fatal(err)
	}
	if src.ConfigMap == nil {
		t.Fatalf("%s is not mounted from a ConfigMap", path.Dir(file))
	}
	cm := one[*corev1.ConfigMap](t, w.objs, "ConfigMap", src.ConfigMap.Name)
	data, ok := cm.Data[path.Base(file)]
	if !ok {
		t.Fatalf("ConfigMap %s has no %s", cm.Name, path.Base(file))
	}
	cfg, err := config.ReadWithoutSecrets(bytes.NewReader([]byte(data)))
	if err != nil {
		t.Fatalf("ConfigMap %s %s: %v", cm.Name, path.Base(file), err)
	}
	return cfg
}

// fileSecrets lists the file: paths of every secret the configuration names.
func fileSecrets(cfg *config.Config) []string {
	refs := []config.SecretRef{cfg.Admin.Token}
	for _, p := range cfg.Pools {
		for _, k := range p.Keys {
			refs = append(refs, k.Secret)
		}
	}
	if r := cfg.State.Redis; r != nil {
		refs = append(refs, r.Password, r.SentinelPassword)
	}
	var out []string
	for _, r := range refs {
		if p, ok := strings.CutPrefix(string(r), "file:"); ok {
			out = append(out, p)
		}
	}
	return out
}

// volumeSource is the volume mounted at dir.
func (w *workload) volumeSource(dir string) (corev1.VolumeSource, error) {
	for _, m := range w.container.VolumeMounts {
		if path.Clean(m.MountPath) != path.Clean(dir) {
			continue
		}
		for _, v := range w.deployment.Spec.Template.Spec.Volumes {
			if v.Name == m.Name {
				return v.VolumeSource, nil
			}
		}
		return corev1.VolumeSource{}, fmt.Errorf("volume mount %s names no volume", m.Name)
	}
	return corev1.VolumeSource{}, fmt.Errorf("nothing is mounted at %s", dir)
}

// secretFileSource reports whether the file at p comes from a key of a Secret: one
// rendered with the manifests, or one the user provides (named by a projected
// volume, as the chart's key references are).
func (w *workload) secretFileSource(p string) error {
	src, rel, err := w.volumeUnder(p)
	if err != nil {
		return fmt.Errorf("secret file %s: %w", p, err)
	}
	switch {
	case src.Secret != nil:
		key := rel
		for _, it := range src.Secret.Items {
			if it.Path == rel {
				key = it.Key
			}
		}
		return w.secretHasKey(src.Secret.SecretName, key, p)
	case src.Projected != nil:
		for _, s := range src.Projected.Sources {
			if s.Secret == nil {
				continue
			}
			for _, it := range s.Secret.Items {
				if it.Path == rel {
					return w.secretHasKey(s.Secret.Name, it.Key, p)
				}
			}
		}
		return fmt.Errorf("secret file %s: no projected Secret item has path %s", p, rel)
	}
	return fmt.Errorf("secret file %s is not mounted from a Secret", p)
}

// volumeUnder is the volume whose mount holds the file p, and p's path inside it.
func (w *workload) volumeUnder(p string) (corev1.VolumeSource, string, error) {
	for _, m := range w.container.VolumeMounts {
		rel, ok := strings.CutPrefix(path.Clean(p), path.Clean(m.MountPath)+"/")
		if !ok {
			continue
		}
		src, err := w.volumeSource(m.MountPath)
		return src, rel, err
	}
	return corev1.VolumeSource{}, "", fmt.Errorf("nothing is mounted above %s", p)
}

// secretHasKey checks a rendered Secret; a Secret that is not rendered is the user's.
func (w *workload) secretHasKey(secret, key, p string) error {
	for _, s := range find[*corev1.Secret](w.objs) {
		if s.Name != secret {
			continue
		}
		if _, ok := s.StringData[key]; ok {
			return nil
		}
		if _, ok := s.Data[key]; ok {
			return nil
		}
		return fmt.Errorf("secret file %s: Secret %s has no key %q", p, secret, key)
	}
	return nil
}

func (w *workload) checkHTTPProbe(t *testing.T, what string, p *corev1.Probe, wantPath string, port int32) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("%s probe %+v, want GET %s", what, p, wantPath)
		return
	}
	if p.HTTPGet.Path != wantPath {
		t.Errorf("%s probe path %s, want %s", what, p.HTTPGet.Path, wantPath)
	}
	got := p.HTTPGet.Port.IntVal
	if p.HTTPGet.Port.Type == intstr.String {
		got = containerPort(w.container, p.HTTPGet.Port.StrVal)
	}
	if got != port {
		t.Errorf("%s probe port %v, want the admin port %d", what, p.HTTPGet.Port.String(), port)
	}
}

func (w *workload) findService(t *testing.T, podLabels map[string]string) *corev1.Service {
	t.Helper()
	var found []*corev1.Service
	for _, s := range find[*corev1.Service](w.objs) {
		if len(s.Spec.Selector) > 0 && labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(podLabels)) {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d Services select the envoy-keypool pods, want 1", len(found))
	}
	return found[0]
}

// checkRedis: the configuration's Redis is a rendered Service in front of rendered
// Redis pods, reachable by the envoy-keypool pods through the NetworkPolicy.
func checkRedis(t *testing.T, w *workload) {
	t.Helper()
	r := w.cfg.State.Redis
	if r == nil {
		t.Fatal("the configuration has no state.redis")
	}
	host, port := redisHostPort(t, r.URL)
	var svc *corev1.Service
	for _, s := range find[*corev1.Service](w.objs) {
		if host == fmt.Sprintf("%s.%s.svc.cluster.local", s.Name, s.Namespace) {
			svc = s
		}
	}
	if svc == nil {
		t.Fatalf("state.redis.url host %s is no rendered Service", host)
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == port }) {
		t.Errorf("Service %s has no port %d", svc.Name, port)
	}
	var redisPods map[string]string
	for _, d := range find[*appsv1.Deployment](w.objs) {
		if labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
			redisPods = d.Spec.Template.Labels
			c := d.Spec.Template.Spec.Containers[0]
			if !slices.Contains(c.Args, "noeviction") {
				t.Errorf("Redis args %v lack maxmemory-policy noeviction: an evicted cooldown puts a failed key back in rotation", c.Args)
			}
		}
	}
	if redisPods == nil {
		t.Fatalf("Service %s selects no rendered Deployment", svc.Name)
	}
	if r.Password == "" {
		t.Error("Redis without a password")
	}
	for _, np := range find[*networkingv1.NetworkPolicy](w.objs) {
		sel, err := metav1AsSelector(&np.Spec.PodSelector)
		if err != nil || !sel.Matches(labels.Set(redisPods)) {
			continue
		}
		allowed := false
		for _, rule := range np.Spec.Ingress {
			for _, from := range rule.From {
				if s, err := metav1AsSelector(from.PodSelector); err == nil && from.PodSelector != nil && s.Matches(labels.Set(w.deployment.Spec.Template.Labels)) {
					allowed = true
				}
			}
		}
		if !allowed {
			t.Errorf("NetworkPolicy %s shuts the envoy-keypool pods out of Redis", np.Name)
		}
	}
}

func redisHostPort(t *testing.T, u string) (string, int32) {
	t.Helper()
	hp := strings.TrimPrefix(strings.TrimPrefix(u, "redis://"), "rediss://")
	hp, _, _ = strings.Cut(hp, "/")
	if at := strings.LastIndex(hp, "@"); at >= 0 {
		hp = hp[at+1:]
	}
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return hp, 6379
	}
	n, _ := strconv.Atoi(port)
	return host, int32(n)
}

func listenPort(t *testing.T, addr string) int32 {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	return int32(n)
}

func containerPort(c corev1.Container, name string) int32 {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return 0
}

// argDuration is the value of a --flag=DURATION argument; 0 when absent.
func argDuration(t *testing.T, args []string, flag string) time.Duration {
	t.Helper()
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatalf("%s: %v", a, err)
			}
			return d
		}
	}
	return 0
}

func ptrValue[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// checkExtProcIngress: whoever opens an ext_proc stream gets a key, so a
// NetworkPolicy admits to the ext_proc port only pods carrying the client label.
func checkExtProcIngress(t *testing.T, objs []object, podLabels map[string]string, port int32) {
	t.Helper()
	client := labels.Set{"envoy-keypool/client": "true"}
	stranger := labels.Set{"app": "anything"}
	var found bool
	for _, np := range find[*networkingv1.NetworkPolicy](objs) {
		sel, err := metav1AsSelector(&np.Spec.PodSelector)
		if err != nil || !sel.Matches(labels.Set(podLabels)) {
			continue
		}
		found = true
		admitted := func(peer labels.Set) bool {
			for _, rule := range np.Spec.Ingress {
				if !ruleHasPort(rule, port) {
					continue
				}
				if len(rule.From) == 0 {
					return true
				}
				for _, from := range rule.From {
					if from.PodSelector == nil {
						return true // a namespace or IP block admits every pod in it
					}
					if s, err := metav1AsSelector(from.PodSelector); err == nil && s.Matches(peer) {
						return true
					}
				}
			}
			return false
		}
		if !admitted(client) {
			t.Errorf("NetworkPolicy %s shuts out pods labelled %v from port %d", np.Name, client, port)
		}
		if admitted(stranger) {
			t.Errorf("NetworkPolicy %s lets any pod open ext_proc streams on port %d, and get keys", np.Name, port)
		}
	}
	if !found {
		t.Error("no NetworkPolicy selects the envoy-keypool pods: any pod can open an ext_proc stream and get a key")
	}
}

func ruleHasPort(rule networkingv1.NetworkPolicyIngressRule, port int32) bool {
	if len(rule.Ports) == 0 {
		return true
	}
	for _, p := range rule.Ports {
		if p.Port == nil || p.Port.IntVal == port {
			return true
		}
	}
	return false
}
