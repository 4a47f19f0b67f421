// Package freeport finds free loopback ports for the test harness and the
// load tool, for processes that cannot be told to listen on port 0 and say
// which port they got (redis-server), or that must come back on the same
// address after a restart (envoy-keypool replicas behind the Envoy stand-in).
//
// A port is free when it is handed out; another process may take it before
// the caller binds it (testredis retries on "address already in use").
package freeport

import (
	"net"
	"strconv"
)

// Addrs returns n distinct 127.0.0.1 addresses with ports free right now.
// Every listener stays open until all n are taken: a port released at once
// could be handed out again within the same call.
func Addrs(n int) ([]string, error) {
	addrs := make([]string, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

// Port returns one loopback port free right now.
func Port() (int, error) {
	addrs, err := Addrs(1)
	if err != nil {
		return 0, err
	}
	_, port, err := net.SplitHostPort(addrs[0])
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(port)
}
