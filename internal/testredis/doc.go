// Package testredis runs real redis-server processes for tests: one per call to
// [Start], on a free loopback port, in the test's temporary directory, with
// persistence off, stopped when the test ends.
//
// It owns the process lifecycle (start, stop, kill, restart empty), a go-redis
// client for the test's own checks, a command-counting hook ([Counter]), a TCP
// proxy that partitions or slows a link ([Proxy]) and the secret scan every test
// that stores state in Redis ends with ([Server.AssertNoSecrets]). It also
// starts the topologies users run:
//
//   - [StartCluster]: a Redis Cluster of three masters and three replicas,
//     formed with `redis-cli --cluster create`, each node on a port p whose
//     cluster bus p+10000 is free too; [Cluster.KillMaster] kills a master and
//     waits until its replica took over.
//   - [StartSentinel]: one master, two replicas and three Sentinels
//     (`redis-server --sentinel`, no other binary); [Sentinel.KillMaster] kills
//     the master and waits until the Sentinels promoted a replica and the other
//     replica follows it.
//
// Every wait is a condition polled against a deadline, never a fixed sleep.
// The timeouts that decide a failure (cluster-node-timeout 1.5s, Sentinel
// down-after 1s) are shorter than Redis's defaults so a failover takes
// seconds, and long enough not to fail over a node that is only slow on a
// loaded machine.
//
// It knows nothing of envoy-keypool's data layout: any package's tests may use
// it.
//
// A missing redis-server fails the test with "install redis-server": CI must not
// silently skip the Redis tests. Set KEYPOOL_SKIP_REDIS=1 to skip them instead on
// a machine without it.
package testredis
