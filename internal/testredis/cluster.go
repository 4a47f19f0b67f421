package testredis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Timing of the Cluster: how long a master may be silent before the others
// count it failed. Redis's default is 15s; 1.5s keeps a master-kill test short
// and still leaves a loaded CI machine (the race detector, other tests) room
// for a slow answer without a spurious failover.
const clusterNodeTimeout = 1500 * time.Millisecond

// clusterDeadline bounds forming a Cluster and each failover wait.
const clusterDeadline = 45 * time.Second

// Cluster is a Redis Cluster of real redis-server processes on loopback: three
// masters sharing the hash slots, one replica each. It is stopped when the
// test ends.
type Cluster struct {
	tb    testing.TB
	nodes []*Server

	mu     sync.Mutex // protects client
	client *redis.ClusterClient
}

// StartCluster starts six cluster-enabled redis-server processes on free
// ports (each port p with p+10000, the cluster bus, free too), joins them with
// `redis-cli --cluster create … --cluster-replicas 1`, and waits until every
// node agrees the cluster is ok and every replica is in sync. opts apply to
// every node (WithPassword, WithArgs).
func StartCluster(tb testing.TB, opts ...Option) *Cluster {
	tb.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		tb.Fatalf("redis-cli not found in PATH: install redis-server (apt-get install redis-server; it brings redis-tools)")
	}
	c := &Cluster{tb: tb}
	nodeOpts := append([]Option{func(cfg *config) {
		cfg.clusterNode = true
		cfg.port = clusterPort
		cfg.args = append(cfg.args,
			"--cluster-node-timeout", strconv.Itoa(int(clusterNodeTimeout.Milliseconds())),
			// A replica may take over whatever its last contact with the master.
			"--cluster-replica-validity-factor", "0")
	}}, opts...)
	for range 6 {
		c.nodes = append(c.nodes, Start(tb, nodeOpts...))
	}
	tb.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.client != nil {
			_ = c.client.Close()
		}
	})

	args := []string{"--cluster", "create"}
	for _, n := range c.nodes {
		args = append(args, n.Addr())
	}
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	if pw := c.nodes[0].Password(); pw != "" {
		args = append(args, "-a", pw, "--no-auth-warning")
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterDeadline)
	defer cancel()
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		tb.Fatalf("testredis: redis-cli --cluster create: %v\n%s", err, tail(string(out), 20))
	}
	if err := pollUntil(ctx, "every node sees a complete, healthy cluster", c.formed); err != nil {
		tb.Fatalf("testredis: %v", err)
	}
	return c
}

// Addrs are host:port of every node, for a client's seed list.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.Addr()
	}
	return out
}

// Nodes are the cluster's processes, in the order they were started.
func (c *Cluster) Nodes() []*Server { return c.nodes }

// Client is a cluster client for the test's own checks, closed when the test
// ends.
func (c *Cluster) Client() *redis.ClusterClient {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client == nil {
		c.client = redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), Password: c.nodes[0].Password()})
	}
	return c.client
}

// Masters lists the running nodes that are masters now.
func (c *Cluster) Masters() []*Server {
	var out []*Server
	for _, n := range c.nodes {
		if role, _ := nodeRole(n); role == "master" {
			out = append(out, n)
		}
	}
	return out
}

// MasterOf is the running master that serves key now.
func (c *Cluster) MasterOf(key string) *Server {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	masters := c.Masters()
	if len(masters) == 0 {
		c.tb.Fatal("testredis: no running master")
	}
	s, err := masters[0].Client().ClusterKeySlot(ctx, key).Result()
	if err != nil {
		c.tb.Fatalf("testredis: CLUSTER KEYSLOT: %v", err)
	}
	slot := int(s)
	for _, n := range masters {
		if c.servesSlot(n, slot) {
			return n
		}
	}
	c.tb.Fatalf("testredis: no running master serves slot %d", slot)
	return nil
}

// KillMaster kills master (SIGKILL) and waits until one of its replicas has
// taken over its slots and every surviving node reports the cluster ok. It
// returns the new master.
func (c *Cluster) KillMaster(master *Server) *Server {
	c.tb.Helper()
	slots := c.slotsOf(master)
	if len(slots) == 0 {
		c.tb.Fatalf("testredis: %s serves no slot: not a master", master.Addr())
	}
	master.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), clusterDeadline)
	defer cancel()
	var promoted *Server
	err := pollUntil(ctx, fmt.Sprintf("a replica of %s promoted and the cluster ok", master.Addr()), func(ctx context.Context) bool {
		promoted = nil
		for _, n := range c.Masters() {
			if n != master && c.servesSlot(n, slots[0]) {
				promoted = n
			}
		}
		return promoted != nil && c.healthy(ctx)
	})
	if err != nil {
		c.tb.Fatalf("testredis: %v", err)
	}
	return promoted
}

// ReplicaOf is a running replica of master, nil when it has none.
func (c *Cluster) ReplicaOf(master *Server) *Server {
	for _, n := range c.nodes {
		if role, _ := nodeRole(n); role == "slave" && replicatesFrom(n, master) {
			return n
		}
	}
	return nil
}

// AssertNoSecrets runs Server.AssertNoSecrets on every running master (the
// replicas hold copies of the same keys) and returns how many keys it
// inspected.
func (c *Cluster) AssertNoSecrets(tb testing.TB, secrets ...string) int {
	tb.Helper()
	n := 0
	for _, m := range c.Masters() {
		n += m.AssertNoSecrets(tb, secrets...)
	}
	return n
}

// formed: every node knows all six, the slots are all assigned, and every
// replica's link to its master is up.
func (c *Cluster) formed(ctx context.Context) bool {
	for _, n := range c.nodes {
		info, err := n.Client().ClusterInfo(ctx).Result()
		if err != nil || !strings.Contains(info, "cluster_state:ok") ||
			!strings.Contains(info, "cluster_slots_assigned:16384") || !strings.Contains(info, "cluster_known_nodes:6") {
			return false
		}
		if role, linkUp := nodeRole(n); role == "slave" && !linkUp {
			return false
		}
	}
	return true
}

// healthy: every running node reports the cluster ok.
func (c *Cluster) healthy(ctx context.Context) bool {
	for _, n := range c.nodes {
		if !n.Running() {
			continue
		}
		info, err := n.Client().ClusterInfo(ctx).Result()
		if err != nil || !strings.Contains(info, "cluster_state:ok") {
			return false
		}
	}
	return true
}

// slotsOf lists the first slot of each range node serves, by its own account.
func (c *Cluster) slotsOf(node *Server) []int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ranges, err := node.Client().ClusterSlots(ctx).Result()
	if err != nil {
		return nil
	}
	var out []int
	for _, r := range ranges {
		if len(r.Nodes) > 0 && r.Nodes[0].Addr == node.Addr() {
			out = append(out, int(r.Start))
		}
	}
	return out
}

func (c *Cluster) servesSlot(node *Server, slot int) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ranges, err := node.Client().ClusterSlots(ctx).Result()
	if err != nil {
		return false
	}
	for _, r := range ranges {
		if int(r.Start) <= slot && slot <= int(r.End) && len(r.Nodes) > 0 {
			return r.Nodes[0].Addr == node.Addr()
		}
	}
	return false
}

// pollUntil polls cond every 20ms until it holds or ctx ends.
func pollUntil(ctx context.Context, what string, cond func(ctx context.Context) bool) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond(ctx) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out waiting until %s", what)
		case <-tick.C:
		}
	}
	return nil
}

// nodeRole is a running server's replication role ("master" or "slave") and,
// for a replica, whether its link to the master is up.
func nodeRole(s *Server) (role string, linkUp bool) {
	if !s.Running() {
		return "", false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := replicationInfo(ctx, s)
	if err != nil {
		return "", false
	}
	return info["role"], info["master_link_status"] == "up"
}

// replicationInfo is the replication section of s's INFO, field by field.
func replicationInfo(ctx context.Context, s *Server) (map[string]string, error) {
	raw, err := s.Client().Info(ctx, "replication").Result()
	if err != nil {
		return nil, err
	}
	return infoFields(raw), nil
}

// infoFields splits an INFO reply into its field: value lines.
func infoFields(info string) map[string]string {
	fields := make(map[string]string)
	for line := range strings.Lines(info) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			fields[k] = v
		}
	}
	return fields
}

// clusterPort finds a port p with p and p+10000 (the cluster bus) free, below
// the kernel's ephemeral range so that outgoing connections do not take them.
func clusterPort() (int, error) {
	for range 100 {
		p := 10000 + rand.IntN(12000) // bus in [20000, 32000)
		if free(p) && free(p+10000) {
			return p, nil
		}
	}
	return 0, errors.New("no free port pair for a cluster node")
}

func free(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

func containsLine(text, line string) bool {
	for l := range strings.Lines(text) {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}
