package testredis

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// AssertNoSecrets reads every key of every database and every value of every
// type (string, hash, set, sorted set, list, stream) and fails the test when a
// secret appears in a key name, a field, a member or a value. It returns how
// many keys it inspected, so a test can also check that it looked at something.
// A stopped server holds nothing and passes.
func (s *Server) AssertNoSecrets(tb testing.TB, secrets ...string) int {
	tb.Helper()
	for _, secret := range secrets {
		if secret == "" {
			tb.Fatal("testredis: AssertNoSecrets: empty secret (it would match everything)")
		}
	}
	if !s.Running() {
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	dbs, err := s.databases(ctx)
	if err != nil {
		tb.Fatalf("testredis: list databases: %v", err)
	}
	inspected := 0
	for _, db := range dbs {
		c := redis.NewClient(&redis.Options{Addr: s.Addr(), Password: s.cfg.password, DB: db})
		n, err := inspectDB(ctx, tb, c, db, secrets)
		_ = c.Close()
		if err != nil {
			tb.Fatalf("testredis: scan db %d: %v", db, err)
		}
		inspected += n
	}
	return inspected
}

// databases lists the databases that hold keys, from INFO keyspace.
func (s *Server) databases(ctx context.Context) ([]int, error) {
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), Password: s.cfg.password})
	defer c.Close()
	info, err := c.Info(ctx, "keyspace").Result()
	if err != nil {
		return nil, err
	}
	var dbs []int
	for line := range strings.Lines(info) {
		name, _, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "db") {
			continue
		}
		n, err := strconv.Atoi(strings.TrimPrefix(name, "db"))
		if err != nil {
			return nil, fmt.Errorf("INFO keyspace line %q: %w", line, err)
		}
		dbs = append(dbs, n)
	}
	return dbs, nil
}

func inspectDB(ctx context.Context, tb testing.TB, c *redis.Client, db int, secrets []string) (int, error) {
	tb.Helper()
	n := 0
	iter := c.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		n++
		check := func(what, text string) {
			tb.Helper()
			for _, secret := range secrets {
				if strings.Contains(text, secret) {
					tb.Errorf("testredis: db %d key %q: secret %s found in %s",
						db, redact(key, secrets), redactedSecret(secret), what)
				}
			}
		}
		check("the key name", key)
		values, err := readValues(ctx, c, key)
		if err != nil {
			return n, fmt.Errorf("key %q: %w", key, err)
		}
		for _, v := range values {
			check("its value", v)
		}
	}
	return n, iter.Err()
}

// readValues returns every string stored under key, whatever its type. A key
// that expired between SCAN and the read has none.
func readValues(ctx context.Context, c *redis.Client, key string) ([]string, error) {
	typ, err := c.Type(ctx, key).Result()
	if err != nil {
		return nil, err
	}
	switch typ {
	case "none":
		return nil, nil
	case "string":
		v, err := c.Get(ctx, key).Result()
		if err == redis.Nil {
			return nil, nil
		}
		return []string{v}, err
	case "hash":
		m, err := c.HGetAll(ctx, key).Result()
		out := make([]string, 0, 2*len(m))
		for f, v := range m {
			out = append(out, f, v)
		}
		return out, err
	case "set":
		return c.SMembers(ctx, key).Result()
	case "zset":
		return c.ZRange(ctx, key, 0, -1).Result()
	case "list":
		return c.LRange(ctx, key, 0, -1).Result()
	case "stream":
		msgs, err := c.XRange(ctx, key, "-", "+").Result()
		var out []string
		for _, m := range msgs {
			for f, v := range m.Values {
				out = append(out, f, fmt.Sprint(v))
			}
		}
		return out, err
	default:
		return nil, fmt.Errorf("cannot inspect a value of type %q", typ)
	}
}

// redact replaces every secret in s by its redacted form.
func redact(s string, secrets []string) string {
	for _, secret := range secrets {
		s = strings.ReplaceAll(s, secret, redactedSecret(secret))
	}
	return s
}

// redactedSecret names a secret in a failure message without printing it whole:
// a failing test log must not become the leak it caught.
func redactedSecret(secret string) string {
	if len(secret) <= 8 {
		return "(" + strconv.Itoa(len(secret)) + " bytes)"
	}
	return strconv.Quote(secret[:4] + "…" + secret[len(secret)-2:])
}
