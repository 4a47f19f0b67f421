package config

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/keypool/redisstate"
)

// State selects where key state lives.
type State struct {
	// RequestTTL is how long a request's tried keys outlive its last failure when
	// the request's end does not forget them (it normally does). Default 10s.
	RequestTTL Duration `yaml:"request_ttl"`
	// Redis shares state between replicas. Absent: state lives in process memory,
	// for a single replica.
	Redis *Redis `yaml:"redis"`
}

// Redis configures the shared state. Give URL (one node), or Addrs: one node,
// Sentinels with MasterName, or Cluster seed nodes (two or more, or Cluster set).
type Redis struct {
	// URL is a redis:// or rediss:// URL (a password in it is better given in Password).
	URL string `yaml:"url"`
	// Addrs are "host:port" addresses of a single node, Sentinels or Cluster nodes.
	Addrs []string `yaml:"addrs"`
	// MasterName selects Sentinel mode. Default: none.
	MasterName string `yaml:"master_name"`
	// Cluster selects Redis Cluster even with a single seed address. Default false.
	Cluster bool `yaml:"cluster"`
	// Username for Redis ACLs. Default: none.
	Username string `yaml:"username"`
	// Password is read from the environment or a file. Default: none.
	Password SecretRef `yaml:"password"`
	// SentinelUsername and SentinelPassword authenticate to the Sentinels when they
	// differ from the master's; the password is read from the environment or a file.
	// Default: none.
	SentinelUsername string    `yaml:"sentinel_username"`
	SentinelPassword SecretRef `yaml:"sentinel_password"`
	// DB selects a database (single node and Sentinel). Default 0.
	DB int `yaml:"db"`
	// TLS turns on TLS for Addrs (URLs say it with rediss://). Default false.
	TLS bool `yaml:"tls"`
	// Prefix starts every Redis key, so deployments can share one Redis.
	// Default "envoy-keypool:".
	Prefix string `yaml:"prefix"`
	// Timeout bounds every Redis call on the request path; it must stay well under
	// Envoy's ext_proc message_timeout (200ms). Default 50ms.
	Timeout Duration `yaml:"timeout"`
	// DialTimeout bounds opening the connections of the background work (change
	// notifications, resynchronisation); requests are bounded by Timeout. Default 1s.
	DialTimeout Duration `yaml:"dial_timeout"`
	// HealthCheckInterval is how often an idle change subscription is checked and
	// how often a replica retries Redis while it is unreachable. Default 1s.
	HealthCheckInterval Duration `yaml:"health_check_interval"`

	password, sentinelPassword string // resolved secrets
}

// ResolvedPassword is the Redis password read from its source.
func (r *Redis) ResolvedPassword() string { return r.password }

// ResolvedSentinelPassword is the Sentinel password read from its source.
func (r *Redis) ResolvedSentinelPassword() string { return r.sentinelPassword }

// The Redis defaults and the timeout bound are redisstate's: this file only
// names them for the configuration, so that one constant decides each.
func (s *State) applyDefaults() {
	setDefault(&s.RequestTTL, Duration(keypool.DefaultTriedTTL))
	if s.Redis != nil {
		setDefault(&s.Redis.Prefix, redisstate.DefaultPrefix)
		setDefault(&s.Redis.Timeout, Duration(redisstate.DefaultTimeout))
		setDefault(&s.Redis.DialTimeout, Duration(redisstate.DefaultDialTimeout))
		setDefault(&s.Redis.HealthCheckInterval, Duration(redisstate.DefaultHealthCheckInterval))
	}
}

func (s *State) validate(path string) []error {
	var errs []error
	if s.RequestTTL.Std() < time.Second {
		errs = append(errs, fieldError(path+".request_ttl", fmt.Errorf("%s is shorter than 1s", s.RequestTTL.Std())))
	}
	r := s.Redis
	if r == nil {
		return errs
	}
	path += ".redis"
	switch {
	case r.URL == "" && len(r.Addrs) == 0:
		errs = append(errs, fieldError(path, errors.New("give url or addrs")))
	case r.URL != "" && len(r.Addrs) > 0:
		errs = append(errs, fieldError(path, errors.New("give url or addrs, not both")))
	case r.URL != "":
		if u, err := url.Parse(r.URL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") {
			errs = append(errs, fieldError(path+".url", errors.New("must be a redis:// or rediss:// URL")))
		}
	}
	if strings.ContainsAny(r.Prefix, "{}") {
		errs = append(errs, fieldError(path+".prefix", fmt.Errorf("%q must not contain '{' or '}': the pool name is the Redis Cluster hash tag", r.Prefix)))
	}
	if r.MasterName != "" && r.Cluster {
		errs = append(errs, fieldError(path+".cluster", errors.New("master_name (Sentinel) and cluster exclude each other")))
	}
	if r.DB != 0 && (r.Cluster || (len(r.Addrs) > 1 && r.MasterName == "")) {
		errs = append(errs, fieldError(path+".db", errors.New("Redis Cluster has only database 0")))
	}
	for field, ref := range map[string]SecretRef{"password": r.Password, "sentinel_password": r.SentinelPassword} {
		if ref == "" {
			continue
		}
		if err := ref.Check(); err != nil {
			errs = append(errs, fieldError(path+"."+field, err))
		}
	}
	for field, d := range map[string]Duration{"dial_timeout": r.DialTimeout, "health_check_interval": r.HealthCheckInterval} {
		if d.Std() <= 0 {
			errs = append(errs, fieldError(path+"."+field, fmt.Errorf("%s is not positive", d.Std())))
		}
	}
	if t := r.Timeout.Std(); t <= 0 || t > redisstate.MaxTimeout {
		errs = append(errs, fieldError(path+".timeout", fmt.Errorf("%s is outside (0, %s]: Envoy's ext_proc message_timeout is 200ms", t, redisstate.MaxTimeout)))
	}
	return errs
}

func (s *State) resolveSecrets(path string, env Environ) []error {
	if s.Redis == nil {
		return nil
	}
	var errs []error
	for _, secret := range []struct {
		field string
		ref   SecretRef
		dst   *string
	}{
		{"password", s.Redis.Password, &s.Redis.password},
		{"sentinel_password", s.Redis.SentinelPassword, &s.Redis.sentinelPassword},
	} {
		if secret.ref == "" || secret.ref.Check() != nil {
			continue // absent, or reported by validate
		}
		v, err := secret.ref.Resolve(env)
		if err != nil {
			errs = append(errs, fieldError(path+".redis."+secret.field, err))
			continue
		}
		*secret.dst = v
	}
	return errs
}
