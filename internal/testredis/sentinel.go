package testredis

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// MasterName is the name under which the Sentinels of StartSentinel monitor
// their master.
const MasterName = "keypool-test"

// Timing of the Sentinels: a master silent for sentinelDownAfter is down (the
// default is 30s); a failover that has not completed in sentinelFailoverTimeout
// is retried.
const (
	sentinelDownAfter       = 1000 * time.Millisecond
	sentinelFailoverTimeout = 10 * time.Second
)

// Sentinel is a Redis Sentinel setup of real processes on loopback: one master,
// two replicas, and three Sentinels (quorum 2) monitoring them as MasterName.
// It is stopped when the test ends.
type Sentinel struct {
	tb        testing.TB
	data      []*Server // the master first, then its replicas, as started
	sentinels []*Server
	clients   []*redis.SentinelClient // one per Sentinel

	clientOnce sync.Once
	client     *redis.Client
}

// StartSentinel starts the master, its two replicas and the three Sentinels,
// and waits until each Sentinel knows both replicas and the two other
// Sentinels and each replica is in sync. opts apply to the data nodes
// (WithPassword, WithArgs); the Sentinels then use the password to reach them.
func StartSentinel(tb testing.TB, opts ...Option) *Sentinel {
	tb.Helper()
	s := &Sentinel{tb: tb}
	master := Start(tb, opts...)
	s.data = append(s.data, master)
	for range 2 {
		s.data = append(s.data, Start(tb, append([]Option{func(c *config) { c.replicaOf = master.Addr() }}, opts...)...))
	}
	host, port, _ := net.SplitHostPort(master.Addr())
	conf := fmt.Sprintf("sentinel monitor %s %s %s 2\n"+
		"sentinel down-after-milliseconds %s %d\n"+
		"sentinel failover-timeout %s %d\n"+
		"sentinel parallel-syncs %s 2\n",
		MasterName, host, port,
		MasterName, sentinelDownAfter.Milliseconds(),
		MasterName, sentinelFailoverTimeout.Milliseconds(),
		MasterName)
	if pw := master.Password(); pw != "" {
		conf += fmt.Sprintf("sentinel auth-pass %s %s\n", MasterName, pw)
	}
	for range 3 {
		sn := Start(tb, func(c *config) { c.sentinel = conf })
		s.sentinels = append(s.sentinels, sn)
		sc := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr(), DialTimeout: time.Second})
		tb.Cleanup(func() { _ = sc.Close() })
		s.clients = append(s.clients, sc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterDeadline)
	defer cancel()
	err := pollUntil(ctx, "every Sentinel knows the replicas and the other Sentinels", func(ctx context.Context) bool {
		for _, sn := range s.sentinels {
			m, err := s.sentinelClient(sn).Master(ctx, MasterName).Result()
			if err != nil || m["num-slaves"] != "2" || m["num-other-sentinels"] != "2" || m["flags"] != "master" {
				return false
			}
		}
		for _, r := range s.data[1:] {
			if role, up := nodeRole(r); role != "slave" || !up {
				return false
			}
		}
		return true
	})
	if err != nil {
		tb.Fatalf("testredis: %v", err)
	}
	return s
}

// Addrs are host:port of the Sentinels, for a client's sentinel addresses.
func (s *Sentinel) Addrs() []string {
	out := make([]string, len(s.sentinels))
	for i, sn := range s.sentinels {
		out[i] = sn.Addr()
	}
	return out
}

// Master is the data node the Sentinels name as master now.
func (s *Sentinel) Master() *Server {
	s.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, sn := range s.sentinels {
		if !sn.Running() {
			continue
		}
		addr, err := s.sentinelClient(sn).GetMasterAddrByName(ctx, MasterName).Result()
		if err != nil || len(addr) != 2 {
			continue
		}
		if n := s.node(net.JoinHostPort(addr[0], addr[1])); n != nil {
			return n
		}
	}
	s.tb.Fatal("testredis: no Sentinel names a master")
	return nil
}

// Data are the master and replicas, in the order they were started.
func (s *Sentinel) Data() []*Server { return s.data }

// Client is a failover client for the test's own checks: it follows the
// Sentinels to the current master. Closed when the test ends.
func (s *Sentinel) Client() *redis.Client {
	s.clientOnce.Do(func() {
		s.client = redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: MasterName, SentinelAddrs: s.Addrs(), Password: s.data[0].Password(),
		})
		s.tb.Cleanup(func() { _ = s.client.Close() })
	})
	return s.client
}

// KillMaster kills the current master (SIGKILL) and waits until the Sentinels
// promoted a replica: each running Sentinel names it, it reports itself master,
// and the other replica replicates from it. It returns the new master.
func (s *Sentinel) KillMaster() *Server {
	s.tb.Helper()
	old := s.Master()
	old.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), clusterDeadline)
	defer cancel()
	var promoted *Server
	err := pollUntil(ctx, "a replica promoted by the Sentinels", func(ctx context.Context) bool {
		promoted = nil
		for _, sn := range s.sentinels {
			addr, err := s.sentinelClient(sn).GetMasterAddrByName(ctx, MasterName).Result()
			if err != nil || len(addr) != 2 {
				return false
			}
			n := s.node(net.JoinHostPort(addr[0], addr[1]))
			if n == nil || n == old || promoted != nil && n != promoted {
				return false
			}
			promoted = n
		}
		if role, _ := nodeRole(promoted); role != "master" {
			return false
		}
		for _, r := range s.data {
			if r == old || r == promoted {
				continue
			}
			if role, up := nodeRole(r); role != "slave" || !up || !replicatesFrom(r, promoted) {
				return false
			}
		}
		return true
	})
	if err != nil {
		s.tb.Fatalf("testredis: %v", err)
	}
	return promoted
}

// AssertNoSecrets runs Server.AssertNoSecrets on every running data node.
func (s *Sentinel) AssertNoSecrets(tb testing.TB, secrets ...string) int {
	tb.Helper()
	n := 0
	for _, d := range s.data {
		n += d.AssertNoSecrets(tb, secrets...)
	}
	return n
}

func (s *Sentinel) node(addr string) *Server {
	for _, d := range s.data {
		if d.Addr() == addr {
			return d
		}
	}
	return nil
}

func (s *Sentinel) sentinelClient(sn *Server) *redis.SentinelClient {
	for i, x := range s.sentinels {
		if x == sn {
			return s.clients[i]
		}
	}
	panic("testredis: not one of this setup's Sentinels")
}

// replicatesFrom reports whether replica's master is master.
func replicatesFrom(replica, master *Server) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := replica.Client().Info(ctx, "replication").Result()
	if err != nil {
		return false
	}
	_, port, _ := net.SplitHostPort(master.Addr())
	return containsLine(info, "master_port:"+port)
}
