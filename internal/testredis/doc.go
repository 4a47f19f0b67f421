// Package testredis runs real redis-server processes for tests: one per call to
// [Start], on a free loopback port, in the test's temporary directory, with
// persistence off, stopped when the test ends.
//
// It owns the process lifecycle (start, stop, restart empty), a go-redis client
// for the test's own checks, a command-counting hook ([Counter]) and the
// secret scan every test that stores state in Redis ends with
// ([Server.AssertNoSecrets]). It knows nothing of envoy-keypool's data layout:
// any package's tests may use it.
//
// A missing redis-server fails the test with "install redis-server": CI must not
// silently skip the Redis tests. Set KEYPOOL_SKIP_REDIS=1 to skip them instead on
// a machine without it.
package testredis
