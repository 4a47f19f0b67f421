package redisstate

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"cdr.dev/slog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// Defaults of Options.
const (
	DefaultPrefix              = "envoy-keypool:"
	DefaultTimeout             = 50 * time.Millisecond
	DefaultDialTimeout         = time.Second
	DefaultHealthCheckInterval = time.Second
)

// MaxTimeout bounds Options.Timeout (inclusive): Envoy's ext_proc message_timeout
// is 200ms by default, and a mark or a read must leave at least a quarter of that
// budget to the rest of the message (the gRPC hop, the walk, the answer). It is
// the one source of this bound: the configuration file's state.redis.timeout is
// checked against it.
const MaxTimeout = 150 * time.Millisecond

// Options configures New. Name Redis with URL (one node), or with Addrs (one node,
// Sentinel with MasterName, Cluster with several seeds or Cluster), or pass a
// ready Client.
type Options struct {
	// URL of one Redis node: redis://[user[:password]@]host[:port][/db], or
	// rediss:// for TLS, with go-redis's query parameters (dial_timeout, pool_size,
	// …). Exclusive with Addrs. Default: none.
	URL string

	// Addrs are host:port of the Redis node, of the Sentinels when MasterName is
	// set, or of Cluster seed nodes when there are two or more or Cluster is set.
	// Default: ["localhost:6379"] when URL and Client are empty too.
	Addrs []string
	// MasterName is the Sentinel master set; setting it selects Sentinel.
	// Default: none.
	MasterName string
	// Cluster selects Redis Cluster even with a single seed address. Default: false.
	Cluster bool
	// DB is the database number (not with Cluster). Default: 0.
	DB int
	// TLSConfig enables TLS with Addrs (rediss:// does it for URL). Default: nil,
	// plain TCP.
	TLSConfig *tls.Config

	// Username and Password authenticate to Redis (ACL user or requirepass). They
	// are resolved values: the configuration reads them from the environment or a
	// file, never argv. Setting one here and in URL is an error. Default: none.
	Username, Password string
	// SentinelUsername and SentinelPassword authenticate to the Sentinels, when
	// they differ from the master's. Default: none.
	SentinelUsername, SentinelPassword string

	// Pools names the pools this replica serves. A resynchronisation (at start,
	// after an outage) reads exactly these and the pools the replica has used
	// since: it never scans the keyspace. Default: none, only the pools used.
	Pools []string

	// Prefix starts every key and the channel name, so several deployments can
	// share one Redis. It must not contain '{' or '}' (hash tags). Default:
	// "envoy-keypool:".
	Prefix string
	// Timeout bounds every Redis call a request makes (a mark, a retry's read),
	// and the override of an operator. At most MaxTimeout (150ms), below Envoy's
	// 200ms ext_proc message_timeout. Default: 50ms.
	Timeout time.Duration
	// DialTimeout bounds the background work: opening a connection outside of a
	// request, and each call of a resynchronisation. A request's calls are
	// bounded by Timeout whatever the dial needs. URL's dial_timeout, when given,
	// bounds the dials only. Default: 1s.
	DialTimeout time.Duration
	// RequestTTL is how long a request's tried set outlives its last failure
	// when the request's end does not forget it (Forget). Default:
	// keypool.DefaultTriedTTL (10s).
	RequestTTL time.Duration
	// HealthCheckInterval is how often an idle change subscription is checked with
	// a PING, and how often a degraded replica retries a resync; also the longest
	// wait between reconnection attempts. Default: 1s.
	HealthCheckInterval time.Duration

	// Clock tells the time cooldowns compare to. Default: the system clock.
	Clock keypool.Clock
	// Logger receives the outage and recovery lines. Default: discards.
	Logger slog.Logger
	// Registerer receives the metrics envoy_keypool_redis_up,
	// envoy_keypool_redis_errors_total{op}, envoy_keypool_redis_notifications_total
	// and envoy_keypool_redis_resyncs_total. Default: nil, not registered.
	Registerer prometheus.Registerer

	// Client is a ready go-redis client to use instead of building one from the
	// fields above (which must then be empty); Close does not close it. It should
	// have ContextTimeoutEnabled so that Timeout bounds every call. Default: nil.
	Client redis.UniversalClient

	// testHooks lets this package's tests interfere with notifications.
	testHooks *testHooks
}

// testHooks are set by this package's tests only.
type testHooks struct {
	// dropNotification, when it returns true, makes the subscriber ignore a change
	// notification, as if the replica missed it.
	dropNotification func(payload string) bool
	// redisHooks are added to the client before the State uses it.
	redisHooks []redis.Hook
	// timeout, when set, replaces Options.Timeout past MaxTimeout: on a loaded
	// CI machine under the race detector a Redis call now and then takes longer
	// than 150ms, which tests of what replicas share must not mistake for an
	// outage. The tests of timeouts and outages set Options.Timeout instead.
	timeout time.Duration
}

// withDefaults returns a copy of o with every zero field set to its default, or
// the errors of every invalid field.
func (o Options) withDefaults() (Options, error) {
	var errs []error
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(o.Prefix, "{}") {
		errs = append(errs, fmt.Errorf("prefix %q: must not contain '{' or '}' (the pool name is the hash tag)", o.Prefix))
	}
	switch {
	case o.Timeout == 0:
		o.Timeout = DefaultTimeout
	case o.Timeout < 0:
		errs = append(errs, fmt.Errorf("timeout %s: must be positive", o.Timeout))
	case o.Timeout > MaxTimeout:
		errs = append(errs, fmt.Errorf("timeout %s: must be at most %s, well under Envoy's 200ms ext_proc message_timeout", o.Timeout, MaxTimeout))
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = DefaultDialTimeout
	} else if o.DialTimeout < 0 {
		errs = append(errs, fmt.Errorf("dial timeout %s: must be positive", o.DialTimeout))
	}
	if o.RequestTTL == 0 {
		o.RequestTTL = keypool.DefaultTriedTTL
	} else if o.RequestTTL < 0 {
		errs = append(errs, fmt.Errorf("request TTL %s: must be positive", o.RequestTTL))
	}
	if o.HealthCheckInterval == 0 {
		o.HealthCheckInterval = DefaultHealthCheckInterval
	} else if o.HealthCheckInterval < 0 {
		errs = append(errs, fmt.Errorf("health check interval %s: must be positive", o.HealthCheckInterval))
	}
	if o.Client != nil && (o.URL != "" || len(o.Addrs) > 0) {
		errs = append(errs, errors.New("client: set either Client or URL/Addrs, not both"))
	}
	if o.URL != "" && len(o.Addrs) > 0 {
		errs = append(errs, errors.New("url and addrs: set one of them"))
	}
	if o.URL != "" && (o.MasterName != "" || o.Cluster) {
		errs = append(errs, errors.New("url names one node: for Sentinel or Cluster use addrs with master_name or cluster"))
	}
	if o.Cluster && o.MasterName != "" {
		errs = append(errs, errors.New("cluster and master_name: Sentinel and Cluster exclude each other"))
	}
	if o.Cluster && o.DB != 0 {
		errs = append(errs, fmt.Errorf("db %d: Redis Cluster has only database 0", o.DB))
	}
	if o.Client == nil && o.URL == "" && len(o.Addrs) == 0 {
		o.Addrs = []string{"localhost:6379"}
	}
	return o, errors.Join(errs...)
}

// newClient builds the go-redis client o describes. o has its defaults.
func (o Options) newClient() (redis.UniversalClient, error) {
	if o.URL != "" {
		ro, err := redis.ParseURL(o.URL)
		if err != nil {
			// The URL may hold a password: name the problem, not the URL.
			return nil, fmt.Errorf("url: %w", redactURLError(err, o.URL))
		}
		if o.Username != "" {
			if ro.Username != "" {
				return nil, errors.New("username: set both in url and in options")
			}
			ro.Username = o.Username
		}
		if o.Password != "" {
			if ro.Password != "" {
				return nil, errors.New("password: set both in url and in options")
			}
			ro.Password = o.Password
		}
		if ro.DialTimeout == 0 {
			ro.DialTimeout = o.DialTimeout
		}
		// The request path bounds its calls with a context deadline; the client's
		// own timeouts bound the background work.
		ro.ReadTimeout = orDefault(ro.ReadTimeout, o.DialTimeout)
		ro.WriteTimeout = orDefault(ro.WriteTimeout, o.DialTimeout)
		ro.ContextTimeoutEnabled = true
		if ro.DialerRetries == 0 {
			ro.DialerRetries = dialerRetries
		}
		if ro.MaxRetries == 0 {
			ro.MaxRetries = maxRetries
		}
		return redis.NewClient(ro), nil
	}
	return redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:                 o.Addrs,
		MasterName:            o.MasterName,
		IsClusterMode:         o.Cluster,
		DB:                    o.DB,
		TLSConfig:             o.TLSConfig,
		Username:              o.Username,
		Password:              o.Password,
		SentinelUsername:      o.SentinelUsername,
		SentinelPassword:      o.SentinelPassword,
		DialTimeout:           o.DialTimeout,
		ReadTimeout:           o.DialTimeout,
		WriteTimeout:          o.DialTimeout,
		DialerRetries:         dialerRetries,
		MaxRetries:            maxRetries,
		ContextTimeoutEnabled: true,
	}), nil
}

// maxRetries is how many times go-redis retries a call that failed on the
// connection (its default is 3, with a growing back-off, and a Cluster client
// retries each node's retries again): once, for a pooled connection a Redis
// restart closed, so that a call to a dead node fails within its bound rather
// than at it.
const maxRetries = 1

// dialerRetries is how many times go-redis dials for one call (its default is
// 5, 100ms apart): once, since every caller retries on its own terms (the
// subscriber, the next request) and a dial retried within one call only spends
// the call's bound, the whole of it against a node that refuses connections.
const dialerRetries = 1

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// redactURLError keeps a URL's password out of a parse error.
func redactURLError(err error, rawURL string) error {
	msg := err.Error()
	if _, rest, ok := strings.Cut(rawURL, "://"); ok {
		if userinfo, _, ok := strings.Cut(rest, "@"); ok {
			if _, pw, ok := strings.Cut(userinfo, ":"); ok && pw != "" {
				msg = strings.ReplaceAll(msg, pw, "xxxxx")
			}
		}
	}
	return errors.New(msg)
}
