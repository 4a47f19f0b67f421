package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Config is the whole configuration file.
type Config struct {
	// Listen holds the listeners and limits of the servers.
	Listen Listen `yaml:"listen"`
	// Shutdown says how the server stops on SIGTERM.
	Shutdown Shutdown `yaml:"shutdown"`
	// Admin configures the admin API.
	Admin Admin `yaml:"admin"`
	// Log configures logging.
	Log Log `yaml:"log"`
	// Envoy holds the names envoy-keypool and the Envoy configuration agree on.
	Envoy Envoy `yaml:"envoy"`
	// State selects where key state lives.
	State State `yaml:"state"`
	// Pools are the key pools, each named by the Envoy filter that uses it.
	Pools []Pool `yaml:"pools"`
}

// Admin configures the admin API.
type Admin struct {
	// Token guards the key API (listing, disabling and enabling keys). Without it the
	// key API is off; /metrics and the health endpoints stay open. Default: none.
	Token SecretRef `yaml:"token"`
	// StatusPage serves the read-only status page on /status (pools, keys, their
	// state; no key value, no hint), without the token, like /metrics, which already
	// exports the same state. false turns it off. Default true.
	StatusPage *bool `yaml:"status_page"`

	token string // resolved Token
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is json or human. Default json.
	Format string `yaml:"format"`
}

// Read parses and checks the configuration in r and reads its secrets through env.
// The error lists every problem found, each naming its field.
func Read(r io.Reader, env Environ) (*Config, error) {
	c, err := parse(r)
	if err != nil {
		return nil, err
	}
	// Secrets are read even when the file has other problems, so one run reports all.
	if err := errors.Join(c.validate(), c.resolveSecrets(env)); err != nil {
		return nil, err
	}
	return c, nil
}

// ReadWithoutSecrets parses and checks the configuration in r like Read, but reads no
// secret: for `envoy-keypool envoy-config`, which needs the pools' names, sizes and
// routes and should run where the keys are not. The pools' ResolvedKeys are empty and
// AdminToken is "": never serve with the result.
func ReadWithoutSecrets(r io.Reader) (*Config, error) {
	c, err := parse(r)
	if err != nil {
		return nil, err
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Load is Read for a file, reading secrets from the process environment.
func Load(path string) (*Config, error) {
	return loadFile(path, func(r io.Reader) (*Config, error) { return Read(r, os.LookupEnv) })
}

// LoadWithoutSecrets is ReadWithoutSecrets for a file.
func LoadWithoutSecrets(path string) (*Config, error) {
	return loadFile(path, ReadWithoutSecrets)
}

func loadFile(path string, read func(io.Reader) (*Config, error)) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open config: %w", err)
	}
	defer f.Close()
	c, err := read(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// parse decodes the YAML strictly (an unknown field is an error) and fills defaults.
func parse(r io.Reader) (*Config, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("config is empty")
		}
		return nil, fmt.Errorf("parse config: %w", err)
	}
	c.applyDefaults()
	return &c, nil
}

func (c *Config) applyDefaults() {
	c.Listen.applyDefaults()
	c.Shutdown.applyDefaults()
	setDefault(&c.Log.Level, "info")
	setDefault(&c.Log.Format, "json")
	c.Envoy.applyDefaults()
	c.State.applyDefaults()
	for i := range c.Pools {
		c.Pools[i].applyDefaults()
	}
}

func setDefault[T comparable](field *T, def T) {
	var zero T
	if *field == zero {
		*field = def
	}
}

// fieldError names the field a problem is about, e.g. "pools[0].keys[1].secret".
func fieldError(path string, err error) error {
	return fmt.Errorf("%s: %w", path, err)
}

func (c *Config) validate() error {
	var errs []error
	errs = append(errs, c.Listen.validate("listen")...)
	errs = append(errs, c.Shutdown.validate("shutdown")...)
	if c.Admin.Token != "" {
		if err := c.Admin.Token.Check(); err != nil {
			errs = append(errs, fieldError("admin.token", err))
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fieldError("log.level", fmt.Errorf("%q is not one of debug, info, warn, error", c.Log.Level)))
	}
	switch c.Log.Format {
	case "json", "human":
	default:
		errs = append(errs, fieldError("log.format", fmt.Errorf("%q is not one of json, human", c.Log.Format)))
	}
	errs = append(errs, c.Envoy.validate("envoy")...)
	errs = append(errs, c.State.validate("state")...)
	if len(c.Pools) == 0 {
		errs = append(errs, fieldError("pools", errors.New("no pool configured")))
	}
	names := map[string]int{}
	for i := range c.Pools {
		path := fmt.Sprintf("pools[%d]", i)
		p := &c.Pools[i]
		if j, dup := names[p.Name]; dup && p.Name != "" {
			errs = append(errs, fieldError(path+".name", fmt.Errorf("duplicate pool name %q (also pools[%d])", p.Name, j)))
		}
		names[p.Name] = i
		errs = append(errs, p.validate(path)...)
	}
	return errors.Join(errs...)
}

func (c *Config) resolveSecrets(env Environ) error {
	var errs []error
	for i := range c.Pools {
		errs = append(errs, c.Pools[i].resolveSecrets(fmt.Sprintf("pools[%d]", i), env)...)
	}
	if c.Admin.Token.Check() == nil {
		v, err := c.Admin.Token.Resolve(env)
		if err != nil {
			errs = append(errs, fieldError("admin.token", err))
		}
		c.Admin.token = v
	}
	errs = append(errs, c.State.resolveSecrets("state", env)...)
	return errors.Join(errs...)
}

// Pool returns the pool called name.
func (c *Config) Pool(name string) (*Pool, bool) {
	for i := range c.Pools {
		if c.Pools[i].Name == name {
			return &c.Pools[i], true
		}
	}
	return nil, false
}

// SecretFiles lists the files the configuration reads secrets from (file:
// references), each once, for a watcher that reloads when one changes.
func (c *Config) SecretFiles() []string {
	var refs []SecretRef
	for _, p := range c.Pools {
		for _, k := range p.Keys {
			refs = append(refs, k.Secret)
		}
	}
	refs = append(refs, c.Admin.Token)
	if r := c.State.Redis; r != nil {
		refs = append(refs, r.Password, r.SentinelPassword)
	}
	seen := map[string]bool{}
	var out []string
	for _, r := range refs {
		if path, ok := strings.CutPrefix(string(r), "file:"); ok && !seen[path] {
			seen[path] = true
			out = append(out, path)
		}
	}
	return out
}

// StatusPageOn reports whether the status page is served.
func (c *Config) StatusPageOn() bool { return c.Admin.StatusPage == nil || *c.Admin.StatusPage }

// AdminToken is the resolved admin token; "" when the key API is off.
func (c *Config) AdminToken() string { return c.Admin.token }
