package deploy

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Envoy AI Gateway's API types (github.com/envoyproxy/ai-gateway/api/v1beta1) cannot
// be imported: the Go module proxy does not serve that module. These mirror the
// fields the AI Gateway example uses, with the same JSON names and nested Gateway API
// types, read from api/v1beta1/ai_gateway_route.go and ai_service_backend.go (commit
// c217da8a5, v1.1). A field the example uses that AI Gateway does not have fails
// the strict decode; a field AI Gateway has that the example does not use is absent
// here on purpose.

type aiGatewayRoute struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              struct {
		ParentRefs []gwapiv1.ParentReference `json:"parentRefs,omitempty"`
		Rules      []struct {
			Matches []struct {
				Headers []gwapiv1.HTTPHeaderMatch `json:"headers,omitempty"`
			} `json:"matches,omitempty"`
			BackendRefs []struct {
				Name     string  `json:"name"`
				Group    *string `json:"group,omitempty"`
				Kind     *string `json:"kind,omitempty"`
				Weight   *int32  `json:"weight,omitempty"`
				Priority *uint32 `json:"priority,omitempty"`
			} `json:"backendRefs,omitempty"`
			Timeouts *gwapiv1.HTTPRouteTimeouts `json:"timeouts,omitempty"`
		} `json:"rules"`
	} `json:"spec,omitempty"`
}

type aiServiceBackend struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              struct {
		Schema struct {
			Name    string  `json:"name"`
			Version *string `json:"version,omitempty"`
		} `json:"schema"`
		BackendRef gwapiv1.BackendObjectReference `json:"backendRef"`
	} `json:"spec,omitempty"`
}
