package config

import (
	"errors"
	"fmt"
	"net/url"
	"time"
)

// State selects where key state lives.
type State struct {
	// RequestTTL is how long the keys a request tried are remembered. Default 10m.
	RequestTTL Duration `yaml:"request_ttl"`
	// Redis shares state between replicas. Absent: state lives in process memory,
	// for a single replica.
	Redis *Redis `yaml:"redis"`
}

// Redis configures the shared state. Give URL, or Addrs (with MasterName for
// Sentinel; several addresses without it mean Cluster).
type Redis struct {
	// URL is a redis:// or rediss:// URL (a password in it is better given in Password).
	URL string `yaml:"url"`
	// Addrs are "host:port" addresses of a single node, Sentinels or Cluster nodes.
	Addrs []string `yaml:"addrs"`
	// MasterName selects Sentinel mode. Default: none.
	MasterName string `yaml:"master_name"`
	// Username for Redis ACLs. Default: none.
	Username string `yaml:"username"`
	// Password is read from the environment or a file. Default: none.
	Password SecretRef `yaml:"password"`
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

	password string // resolved Password
}

// ResolvedPassword is the Redis password read from its source.
func (r *Redis) ResolvedPassword() string { return r.password }

// maxRedisTimeout keeps a Redis call well inside Envoy's default message_timeout.
const maxRedisTimeout = 150 * time.Millisecond

func (s *State) applyDefaults() {
	setDefault(&s.RequestTTL, Duration(10*time.Minute))
	if s.Redis != nil {
		setDefault(&s.Redis.Prefix, "envoy-keypool:")
		setDefault(&s.Redis.Timeout, Duration(50*time.Millisecond))
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
	if r.Password != "" {
		if err := r.Password.Check(); err != nil {
			errs = append(errs, fieldError(path+".password", err))
		}
	}
	if t := r.Timeout.Std(); t <= 0 || t > maxRedisTimeout {
		errs = append(errs, fieldError(path+".timeout", fmt.Errorf("%s is outside (0, %s]: Envoy's ext_proc message_timeout is 200ms", t, maxRedisTimeout)))
	}
	return errs
}

func (s *State) resolveSecrets(path string, env Environ) []error {
	if s.Redis == nil || s.Redis.Password.Check() != nil {
		return nil // absent, or reported by validate
	}
	v, err := s.Redis.Password.Resolve(env)
	if err != nil {
		return []error{fieldError(path+".redis.password", err)}
	}
	s.Redis.password = v
	return nil
}
