package freeport_test

import (
	"net"
	"strconv"
	"testing"

	"github.com/envoy-keypool/envoy-keypool/internal/freeport"
)

// The replicas of a stack each get two listeners: no two of them may share a
// port, or a replica refuses to start.
func TestFreeAddrsAreDistinctLoopbackAddresses(t *testing.T) {
	addrs, err := freeport.Addrs(64)
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

func TestPortIsOneThatCanBeListenedOn(t *testing.T) {
	port, err := freeport.Port()
	if err != nil {
		t.Fatal(err)
	}
	if port <= 0 || port > 65535 {
		t.Fatalf("port %d", port)
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("listen on the free port %d: %v", port, err)
	}
	l.Close()
}
