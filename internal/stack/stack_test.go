package stack

import (
	"net"
	"testing"
)

// The replicas of a stack each get two listeners: no two of them may share a
// port, or a replica refuses to start.
func TestFreeAddrsAreDistinctLoopbackAddresses(t *testing.T) {
	addrs, err := freeAddrs(64)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 64 {
		t.Fatalf("%d addresses, want 64", len(addrs))
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		host, _, err := net.SplitHostPort(a)
		if err != nil || host != "127.0.0.1" {
			t.Errorf("address %q: host %q, %v; want loopback", a, host, err)
		}
		if seen[a] {
			t.Errorf("address %s handed out twice", a)
		}
		seen[a] = true
	}
}
