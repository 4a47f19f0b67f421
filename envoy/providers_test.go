package envoy_test

import (
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// Every provider's default upstream gets a cluster that reaches the provider's own
// host over TLS, with SNI and the certificate's name checked, and the Host header the
// provider expects; an Azure pool reaches its resource's host.
func TestEachProviderReachesItsHost(t *testing.T) {
	tests := []struct {
		name, provider, extra string
		wantHost              string
	}{
		{"openai", "openai", "", "api.openai.com"},
		{"anthropic", "anthropic", "", "api.anthropic.com"},
		{"gemini", "gemini", "", "generativelanguage.googleapis.com"},
		{"azure", "azure-openai", "    azure: {resource: contoso-eastus}\n", "contoso-eastus.openai.azure.com"},
		{"groq", "openai-compatible", "    openai_compatible: {preset: groq}\n", "api.groq.com"},
		{"openrouter", "openai-compatible", "    openai_compatible: {preset: openrouter}\n", "openrouter.ai"},
		{"cerebras", "openai-compatible", "    openai_compatible: {preset: cerebras}\n", "api.cerebras.ai"},
		{"mistral", "openai-compatible", "    openai_compatible: {preset: mistral}\n", "api.mistral.ai"},
		{"deepseek", "openai-compatible", "    openai_compatible: {preset: deepseek}\n", "api.deepseek.com"},
		{"together", "openai-compatible", "    openai_compatible: {preset: together}\n", "api.together.xyz"},
		{"fireworks", "openai-compatible", "    openai_compatible: {preset: fireworks}\n", "api.fireworks.ai"},
		{"xai", "openai-compatible", "    openai_compatible: {preset: xai}\n", "api.x.ai"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := generate(t, pools(pool("p", tt.provider, 2, tt.extra)))
			c := bs.GetStaticResources().GetClusters()[0]
			sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			if sa.GetAddress() != tt.wantHost || sa.GetPortValue() != 443 {
				t.Errorf("endpoint %s:%d, want %s:443", sa.GetAddress(), sa.GetPortValue(), tt.wantHost)
			}
			if got := hcmOf(t, bs).GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0].GetRoute().GetHostRewriteLiteral(); got != tt.wantHost {
				t.Errorf("Host header %q, want %q", got, tt.wantHost)
			}
			tc := &tlsv3.UpstreamTlsContext{}
			if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(tc); err != nil {
				t.Fatalf("no TLS to %s: %v", tt.wantHost, err)
			}
			sans := tc.GetCommonTlsContext().GetValidationContext().GetMatchTypedSubjectAltNames()
			if tc.GetSni() != tt.wantHost || len(sans) != 1 || sans[0].GetMatcher().GetExact() != tt.wantHost {
				t.Errorf("SNI %q, names checked %v; want %s", tc.GetSni(), sans, tt.wantHost)
			}
		})
	}
}
