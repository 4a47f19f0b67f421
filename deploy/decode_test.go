package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	yamlv3 "go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	istionet "istio.io/api/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// object is one decoded manifest: its kind and name, and the typed value.
type object struct {
	APIVersion, Kind, Namespace, Name string
	Value                             any
}

func (o object) String() string { return fmt.Sprintf("%s %s/%s", o.Kind, o.Namespace, o.Name) }

// goTypes are the Go API types manifests decode into, by apiVersion and kind.
var goTypes = map[string]func() any{
	"v1/Namespace":                                  func() any { return &corev1.Namespace{} },
	"v1/ConfigMap":                                  func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                                     func() any { return &corev1.Secret{} },
	"v1/Service":                                    func() any { return &corev1.Service{} },
	"v1/ServiceAccount":                             func() any { return &corev1.ServiceAccount{} },
	"apps/v1/Deployment":                            func() any { return &appsv1.Deployment{} },
	"policy/v1/PodDisruptionBudget":                 func() any { return &policyv1.PodDisruptionBudget{} },
	"networking.k8s.io/v1/NetworkPolicy":            func() any { return &networkingv1.NetworkPolicy{} },
	"gateway.networking.k8s.io/v1/HTTPRoute":        func() any { return &gwapiv1.HTTPRoute{} },
	"gateway.networking.k8s.io/v1/BackendTLSPolicy": func() any { return &gwapiv1.BackendTLSPolicy{} },
	"gateway.envoyproxy.io/v1alpha1/Backend":        func() any { return &egv1a1.Backend{} },
	"gateway.envoyproxy.io/v1alpha1/BackendTrafficPolicy": func() any {
		return &egv1a1.BackendTrafficPolicy{}
	},
	"gateway.envoyproxy.io/v1alpha1/ClientTrafficPolicy": func() any { return &egv1a1.ClientTrafficPolicy{} },
	"gateway.envoyproxy.io/v1alpha1/EnvoyPatchPolicy":    func() any { return &egv1a1.EnvoyPatchPolicy{} },
	// Envoy AI Gateway's module is not served by the Go module proxy: its two kinds
	// decode into mirrors of the fields the example uses (aigateway_types_test.go).
	"aigateway.envoyproxy.io/v1beta1/AIGatewayRoute":   func() any { return &aiGatewayRoute{} },
	"aigateway.envoyproxy.io/v1beta1/AIServiceBackend": func() any { return &aiServiceBackend{} },
}

// istioSpecs are Istio's kinds, whose spec is a protobuf message: decoded with
// protojson, which refuses unknown fields.
var istioSpecs = map[string]func() proto.Message{
	"networking.istio.io/v1/ServiceEntry":       func() proto.Message { return &istionet.ServiceEntry{} },
	"networking.istio.io/v1/DestinationRule":    func() proto.Message { return &istionet.DestinationRule{} },
	"networking.istio.io/v1alpha3/EnvoyFilter":  func() proto.Message { return &istionet.EnvoyFilter{} },
	"networking.istio.io/v1alpha3/ServiceEntry": func() proto.Message { return &istionet.ServiceEntry{} },
}

// istioObject is an Istio resource: Kubernetes metadata around a protobuf spec.
type istioObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              proto.Message `json:"-"`
}

// decodeAll decodes every YAML document of a manifest stream strictly: an unknown
// kind, an unknown field, a field in the wrong case or a duplicate key is an error.
func decodeAll(data []byte) ([]object, error) {
	var out []object
	var errs []error
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	for i := 0; ; i++ {
		var node yamlv3.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(node.Content) == 0 || (node.Content[0].Kind == yamlv3.ScalarNode && node.Content[0].Tag == "!!null") {
			continue // an empty document, or one of comments only
		}
		doc, err := yamlv3.Marshal(&node)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if strings.TrimSpace(string(doc)) == "null" {
			continue // an empty document
		}
		o, err := decodeOne(doc)
		if err != nil {
			errs = append(errs, fmt.Errorf("document %d: %w", i, err))
			continue
		}
		out = append(out, o)
	}
	return out, errors.Join(errs...)
}

func decodeOne(doc []byte) (object, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return object{}, err
	}
	// The envelope only, leniently: the typed decode below is the strict one.
	var env struct {
		metav1.TypeMeta   `json:",inline"`
		metav1.ObjectMeta `json:"metadata"`
		Spec              rawJSON `json:"spec"`
	}
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(js, &env); err != nil {
		return object{}, err
	}
	gvk := env.APIVersion + "/" + env.Kind
	o := object{APIVersion: env.APIVersion, Kind: env.Kind, Namespace: env.Namespace, Name: env.Name}
	if newSpec, ok := istioSpecs[gvk]; ok {
		var strictEnv struct {
			metav1.TypeMeta   `json:",inline"`
			metav1.ObjectMeta `json:"metadata"`
			Spec              rawJSON `json:"spec"`
		}
		if err := strictJSON(js, &strictEnv); err != nil {
			return o, fmt.Errorf("%s: %w", o, err)
		}
		spec := newSpec()
		if err := protojson.Unmarshal(strictEnv.Spec, spec); err != nil {
			return o, fmt.Errorf("%s: spec: %w", o, err)
		}
		o.Value = &istioObject{TypeMeta: strictEnv.TypeMeta, ObjectMeta: strictEnv.ObjectMeta, Spec: spec}
		return o, nil
	}
	newValue, ok := goTypes[gvk]
	if !ok {
		return o, fmt.Errorf("%s: no Go type registered for %s", o, gvk)
	}
	v := newValue()
	if err := strictJSON(js, v); err != nil {
		return o, fmt.Errorf("%s: %w", o, err)
	}
	o.Value = v
	return o, nil
}

// rawJSON is JSON kept for a second, typed decode.
type rawJSON []byte

// UnmarshalJSON keeps the bytes.
func (r *rawJSON) UnmarshalJSON(b []byte) error {
	*r = append((*r)[:0], b...)
	return nil
}

// strictJSON decodes like the API server's strict field validation: unknown fields,
// fields in the wrong case and duplicate fields are errors.
func strictJSON(js []byte, v any) error {
	strict, err := sigsjson.UnmarshalStrict(js, v, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// find returns the objects of a kind.
func find[T any](objs []object) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.Value.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// one returns the only object of a kind and name.
func one[T any](t *testing.T, objs []object, kind, name string) T {
	t.Helper()
	var found []T
	for _, o := range objs {
		if o.Kind == kind && o.Name == name {
			if v, ok := o.Value.(T); ok {
				found = append(found, v)
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d %s %q in the manifests, want 1", len(found), kind, name)
	}
	return found[0]
}

func TestStrictDecodingRefusesWhatTheAPIServerWould(t *testing.T) {
	for _, tc := range []struct {
		name, doc, wantErr string
	}{
		{"unknown field", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIp: None}\n", "unknown field"},
		{"field in the wrong case", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ClusterIP: None}\n", "ClusterIP"},
		{"duplicate key", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: None, clusterIP: None}\n", "already set"},
		{"unknown kind", "apiVersion: v1\nkind: Servic\nmetadata: {name: a}\n", "no Go type registered"},
		{"unknown field in an Istio spec", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec: {hostz: [a]}\n", "hostz"},
		{"unknown field in an Envoy Gateway policy", "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {name: a}\nspec: {circuitBreaker: {maxRetries: 3}}\n", "maxRetries"},
		{"unknown field in an AI Gateway route", "apiVersion: aigateway.envoyproxy.io/v1beta1\nkind: AIGatewayRoute\nmetadata: {name: a}\nspec: {rules: [{backendRef: {name: a}}]}\n", "backendRef"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeAll([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("decode: %v, want an error naming %q", err, tc.wantErr)
			}
		})
	}
}
