package deploy

import (
	"os"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

const chartDir = "helm/envoy-keypool"

// helmTemplate renders the chart as `helm template` (and `helm install`) would:
// values.yaml, then ci/values-example.yaml, then overrides, checked against
// values.schema.json.
func helmTemplate(t *testing.T, overrides string) ([]object, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]any{}
	for _, src := range []string{readFile(t, chartDir+"/ci/values-example.yaml"), overrides} {
		var v map[string]any
		if err := yaml.Unmarshal([]byte(src), &v); err != nil {
			t.Fatal(err)
		}
		vals = chartutil.CoalesceTables(v, vals)
	}
	rv, err := chartutil.ToRenderValuesWithSchemaValidation(ch, vals,
		chartutil.ReleaseOptions{Name: "keypool", Namespace: "llm", IsInstall: true}, chartutil.DefaultCapabilities, false)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var all strings.Builder
	for _, n := range names {
		if !strings.HasSuffix(n, ".yaml") {
			continue
		}
		all.WriteString("---\n" + files[n] + "\n")
	}
	objs, err := decodeAll([]byte(all.String()))
	if err != nil {
		t.Fatalf("rendered chart: %v", err)
	}
	return objs, nil
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mustTemplate(t *testing.T, overrides string) []object {
	t.Helper()
	objs, err := helmTemplate(t, overrides)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func TestHelmChartRendersAWorkingDeployment(t *testing.T) {
	for _, tc := range []struct {
		name, values string
		check        func(t *testing.T, w *workload)
	}{
		{"example values", "", func(t *testing.T, w *workload) {
			if got := ptrValue(w.deployment.Spec.Replicas, 1); got != 2 {
				t.Errorf("replicas %d, want 2", got)
			}
			if w.cfg.State.Redis != nil {
				t.Error("Redis configured without redis values")
			}
			if len(w.cfg.Pools) != 2 || len(w.cfg.Pools[0].Keys) != 2 || w.cfg.Pools[1].Cooldowns["rate_limited"].Default.Std().Seconds() != 30 {
				t.Errorf("pools %+v: want the values' two pools with their keys and settings", w.cfg.Pools)
			}
		}},
		{"bundled Redis", "redis: {enabled: true, passwordSecretRef: {name: redis-auth, key: password}}", func(t *testing.T, w *workload) {
			checkRedis(t, w)
		}},
		{"external Redis", "redis: {url: rediss://redis.example.internal:6380, passwordSecretRef: {name: redis-auth, key: password}}", func(t *testing.T, w *workload) {
			if r := w.cfg.State.Redis; r == nil || r.URL != "rediss://redis.example.internal:6380" || r.Password == "" {
				t.Errorf("state.redis %+v, want the given URL and password", r)
			}
		}},
		{"replicas and resources", "replicas: 4\nresources: {requests: {cpu: 500m, memory: 128Mi}}", func(t *testing.T, w *workload) {
			if got := ptrValue(w.deployment.Spec.Replicas, 1); got != 4 {
				t.Errorf("replicas %d, want 4", got)
			}
			if got := w.container.Resources.Requests.Cpu().String(); got != "500m" {
				t.Errorf("cpu request %s, want 500m", got)
			}
		}},
		{"longer shutdown", "drainDelaySeconds: 15\nshutdownTimeoutSeconds: 1200", func(t *testing.T, w *workload) {
			if got := ptrValue(w.deployment.Spec.Template.Spec.TerminationGracePeriodSeconds, 0); got != 1225 {
				t.Errorf("terminationGracePeriodSeconds %d, want 15 + 1200 + 10", got)
			}
		}},
		{"envoy settings pass through", "envoy: {listen: 0.0.0.0:8080, keypool_addresses: [keypool.llm:9001]}", func(t *testing.T, w *workload) {
			if w.cfg.Envoy.Listen != "0.0.0.0:8080" {
				t.Errorf("envoy.listen %q", w.cfg.Envoy.Listen)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := mustTemplate(t, tc.values)
			var w *workload
			t.Run("workload", func(t *testing.T) {
				if strings.Contains(tc.values, "keypool_addresses") {
					t.Skip("the values name other replica addresses on purpose")
				}
				w = checkWorkload(t, objs)
			})
			if w == nil {
				w = &workload{objs: objs}
				w.deployment = one[*appsv1.Deployment](t, objs, "Deployment", "keypool-envoy-keypool")
				w.container = w.deployment.Spec.Template.Spec.Containers[0]
				w.cfg = w.config(t)
			}
			tc.check(t, w)
		})
	}
}

func TestHelmSingleReplicaHasNoDisruptionBudget(t *testing.T) {
	objs := mustTemplate(t, "replicas: 1")
	for _, o := range objs {
		if o.Kind == "PodDisruptionBudget" {
			t.Error("a PodDisruptionBudget for one replica would block every node drain")
		}
	}
}

func TestHelmRefusesBadValues(t *testing.T) {
	for _, tc := range []struct {
		name, values, wantErr string
	}{
		{"a key without a Secret reference", "pools: [{name: p, provider: openai, keys: [{id: k}]}]", "secretRef"},
		{"a Secret reference without a key", "pools: [{name: p, provider: openai, keys: [{id: k, secretRef: {name: s}}]}]", "key"},
		{"no replicas", "replicas: 0", "replicas"},
		{"a misspelt value", "replica: 3", "replica"},
		{"bundled Redis without a password", "redis: {enabled: true}", "redis.passwordSecretRef"},
		{"a Redis URL that is not one", "redis: {url: http://redis:6379}", "url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := helmTemplate(t, tc.values)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("render: %v, want an error naming %q", err, tc.wantErr)
			}
		})
	}
}

func TestHelmRefusesNoPools(t *testing.T) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	rv, err := chartutil.ToRenderValuesWithSchemaValidation(ch, map[string]any{},
		chartutil.ReleaseOptions{Name: "keypool", Namespace: "llm", IsInstall: true}, chartutil.DefaultCapabilities, false)
	if err == nil {
		_, err = engine.Render(ch, rv)
	}
	if err == nil || !strings.Contains(err.Error(), "at least one pool") {
		t.Fatalf("render with the default values: %v, want an error asking for a pool", err)
	}
}
