package deploy

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// kustomize renders a kustomization directory as `kubectl kustomize` would.
func kustomize(t *testing.T, dir string) []object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := rm.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeAll(out)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	return objs
}

func TestKustomizeBase(t *testing.T) {
	objs := kustomize(t, "kubernetes/base")
	w := checkWorkload(t, objs)
	if got := ptrValue(w.deployment.Spec.Replicas, 1); got != 2 {
		t.Errorf("replicas %d, want 2", got)
	}
	if w.cfg.State.Redis != nil {
		t.Error("the base configures Redis; it is the overlay's")
	}
	for _, o := range objs {
		if o.Kind != "Namespace" && o.Namespace != "envoy-keypool" {
			t.Errorf("%s is outside the envoy-keypool namespace", o)
		}
	}
}

func TestKustomizeRedisOverlay(t *testing.T) {
	objs := kustomize(t, "kubernetes/overlays/redis")
	w := checkWorkload(t, objs)
	checkRedis(t, w)
	// The overlay replaces the base's configuration: one ConfigMap, with Redis.
	if n := len(find[*corev1.ConfigMap](objs)); n != 1 {
		t.Errorf("%d ConfigMaps, want 1", n)
	}
}
