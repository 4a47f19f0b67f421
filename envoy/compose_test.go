package envoy_test

import (
	"bufio"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/envoy"
)

// Docker cannot run on the machines this project is built on, so docker-compose.yml
// is checked by reading it: what it mounts exists, the names the configurations use
// are its services, the images run binaries and flags that exist.

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Build       *composeBuild     `yaml:"build"`
	Command     []string          `yaml:"command"`
	Volumes     []string          `yaml:"volumes"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
}

type composeBuild struct {
	Context string `yaml:"context"`
	Target  string `yaml:"target"`
}

func readCompose(t *testing.T) composeFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return c
}

// mounts maps a service's container paths to repository paths for its bind mounts of
// repository files ("./x:/y[:ro]").
func (s composeService) mounts() map[string]string {
	out := map[string]string{}
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && strings.HasPrefix(parts[0], "./") {
			out[parts[1]] = strings.TrimPrefix(parts[0], "./")
		}
	}
	return out
}

// flagValue returns the value after flag in the command ("-c x" or "--c=x").
func (s composeService) flagValue(names ...string) string {
	for i, a := range s.Command {
		for _, n := range names {
			if a == n && i+1 < len(s.Command) {
				return s.Command[i+1]
			}
			if v, ok := strings.CutPrefix(a, n+"="); ok {
				return v
			}
		}
	}
	return ""
}

func (s composeService) env(name string) (string, bool) {
	v, ok := s.Environment[name]
	return v, ok
}

// services returns the compose services built from a Dockerfile target.
func (c composeFile) servicesOf(target string) []string {
	var out []string
	for name, s := range c.Services {
		if s.Build != nil && s.Build.Target == target {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

func TestComposeStack(t *testing.T) {
	c := readCompose(t)
	for _, want := range []string{"envoy", "redis", "mock-provider"} {
		if _, ok := c.Services[want]; !ok {
			t.Errorf("no service %q", want)
		}
	}
	if got := c.servicesOf("envoy-keypool"); len(got) != 2 {
		t.Errorf("envoy-keypool replicas %v, want two", got)
	}
	if img := c.Services["redis"].Image; !strings.HasPrefix(img, "redis:7") {
		t.Errorf("redis image %q", img)
	}
}

var envoyImage = regexp.MustCompile(`^envoyproxy/envoy:v(\d+)\.(\d+)\.(\d+)$`)

// Envoy is pinned to a patch release no older than 1.37: an upstream ext_proc
// filter breaks retries before 1.37.0 (ENVOY.md).
func TestComposeEnvoyIsPinned(t *testing.T) {
	img := readCompose(t).Services["envoy"].Image
	m := envoyImage.FindStringSubmatch(img)
	if m == nil {
		t.Fatalf("envoy image %q is not pinned as envoyproxy/envoy:vX.Y.Z", img)
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	if major < 1 || (major == 1 && minor < 37) {
		t.Errorf("envoy image %q: want 1.37 or later", img)
	}
}

// Every repository file a service mounts exists.
func TestComposeMountsExist(t *testing.T) {
	for name, s := range readCompose(t).Services {
		for dst, src := range s.mounts() {
			if fi, err := os.Stat(filepath.Join(repoRoot, src)); err != nil || fi.IsDir() {
				t.Errorf("service %s mounts ./%s at %s: not a file in the repository (%v)", name, src, dst, err)
			}
		}
	}
}

// Envoy runs the generated compose configuration, and every host it dials is a
// service listening on the port Envoy dials.
func TestComposeEnvoyConfig(t *testing.T) {
	c := readCompose(t)
	e := c.Services["envoy"]
	path := e.flagValue("-c", "--config-path")
	src, ok := e.mounts()[path]
	if !ok {
		t.Fatalf("envoy runs -c %q, which is not a mounted repository file", path)
	}
	if src != composeEnvoy {
		t.Errorf("envoy runs %s, want the generated %s", src, composeEnvoy)
	}
	bs, err := envoy.LoadBootstrap(filepath.Join(repoRoot, src))
	if err != nil {
		t.Fatal(err)
	}
	listens := servicePorts(t, c)
	for _, cl := range bs.GetStaticResources().GetClusters() {
		for _, lle := range cl.GetLoadAssignment().GetEndpoints() {
			for _, lbe := range lle.GetLbEndpoints() {
				sa := lbe.GetEndpoint().GetAddress().GetSocketAddress()
				host, port := sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))
				if net.ParseIP(host) != nil {
					t.Errorf("cluster %q dials %s: in compose, dial services by name", cl.GetName(), host)
					continue
				}
				if _, ok := c.Services[host]; !ok {
					t.Errorf("cluster %q dials %s:%s, but there is no service %q", cl.GetName(), host, port, host)
					continue
				}
				if got, known := listens[host]; known && got != port {
					t.Errorf("cluster %q dials %s:%s, but the service listens on %s", cl.GetName(), host, port, got)
				}
			}
		}
	}
	admin := bs.GetAdmin().GetAddress().GetSocketAddress()
	if admin.GetAddress() != "127.0.0.1" || admin.GetPortValue() != 9901 {
		t.Errorf("admin at %s:%d; the compose healthcheck asks 127.0.0.1:9901", admin.GetAddress(), admin.GetPortValue())
	}
}

// servicePorts is the port each built service listens on, read from its own
// configuration: an envoy-keypool replica's listen.grpc, the mock provider's --listen.
func servicePorts(t *testing.T, c composeFile) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, name := range c.servicesOf("envoy-keypool") {
		cfg := loadServiceConfig(t, c, name)
		_, port, _ := net.SplitHostPort(cfg.Listen.GRPC)
		out[name] = port
	}
	for _, name := range c.servicesOf("mock-provider") {
		_, port, err := net.SplitHostPort(c.Services[name].flagValue("--listen", "-listen"))
		if err != nil {
			t.Errorf("service %s: --listen: %v", name, err)
		}
		out[name] = port
	}
	return out
}

// loadServiceConfig loads the envoy-keypool config a replica runs, with the
// replica's own environment: every secret it names must be set there.
func loadServiceConfig(t *testing.T, c composeFile, name string) *config.Config {
	t.Helper()
	s := c.Services[name]
	path := s.flagValue("--config", "-config")
	src, ok := s.mounts()[path]
	if !ok {
		t.Fatalf("service %s runs --config %q, which is not a mounted repository file", name, path)
	}
	f, err := os.Open(filepath.Join(repoRoot, src))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := config.Read(f, s.env)
	if err != nil {
		t.Fatalf("service %s: %v", name, err)
	}
	return cfg
}

// Each replica's config loads with the replica's environment, keeps state in the
// compose Redis, and the replicas Envoy reaches are the replicas compose runs.
func TestComposeKeypoolReplicas(t *testing.T) {
	c := readCompose(t)
	replicas := c.servicesOf("envoy-keypool")
	for _, name := range replicas {
		cfg := loadServiceConfig(t, c, name)
		if cfg.State.Redis == nil {
			t.Errorf("%s keeps key state in memory: two replicas would not share it", name)
			continue
		}
		u, err := url.Parse(cfg.State.Redis.URL)
		if err != nil || c.Services[u.Hostname()].Image == "" || !strings.HasPrefix(c.Services[u.Hostname()].Image, "redis") {
			t.Errorf("%s: redis url %q does not name the compose Redis service", name, cfg.State.Redis.URL)
		}
		var hosts []string
		for _, a := range cfg.Envoy.KeypoolAddresses {
			h, _, _ := net.SplitHostPort(a)
			hosts = append(hosts, h)
		}
		slices.Sort(hosts)
		if !slices.Equal(hosts, replicas) {
			t.Errorf("%s: envoy.keypool_addresses name %v, compose runs %v", name, hosts, replicas)
		}
	}
}

// dockerStage is one FROM … AS name stage of the Dockerfile.
type dockerStage struct {
	entrypoint []string
	builds     []string // ./cmd/X and ./internal/cmd/X packages built with go build
}

func readDockerfile(t *testing.T) map[string]*dockerStage {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stages := map[string]*dockerStage{}
	var cur *dockerStage
	buildPkg := regexp.MustCompile(`\./(?:internal/)?cmd/[A-Za-z0-9_-]+`)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			cur = &dockerStage{}
			if len(fields) == 4 && strings.EqualFold(fields[2], "AS") {
				stages[fields[3]] = cur
			}
		case "ENTRYPOINT":
			if cur != nil {
				if err := json.Unmarshal([]byte(strings.TrimSpace(strings.TrimPrefix(sc.Text(), fields[0]))), &cur.entrypoint); err != nil {
					t.Errorf("Dockerfile %s: want the exec (JSON) form: %v", sc.Text(), err)
				}
			}
		}
		if cur != nil {
			cur.builds = append(cur.builds, buildPkg.FindAllString(sc.Text(), -1)...)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return stages
}

// Each built service's image runs a binary this repository builds from ./cmd/NAME,
// and its command uses a subcommand and flags that binary defines. (Flags are looked
// up as string literals in the command's Go source: a cheap check that catches a
// renamed or misspelt flag, not a parser.)
func TestComposeCommandsExist(t *testing.T) {
	c := readCompose(t)
	stages := readDockerfile(t)
	var built []string
	for _, st := range stages {
		built = append(built, st.builds...)
	}
	for name, s := range c.Services {
		if s.Build == nil {
			continue
		}
		st, ok := stages[s.Build.Target]
		if !ok {
			t.Errorf("service %s builds Dockerfile target %q, which does not exist", name, s.Build.Target)
			continue
		}
		if len(st.entrypoint) != 1 {
			t.Errorf("target %s: entrypoint %v, want the binary alone", s.Build.Target, st.entrypoint)
			continue
		}
		bin := filepath.Base(st.entrypoint[0])
		i := slices.IndexFunc(built, func(pkg string) bool { return filepath.Base(pkg) == bin })
		if i < 0 {
			t.Errorf("target %s runs %s, but the Dockerfile never builds ./cmd/%s or ./internal/cmd/%s", s.Build.Target, st.entrypoint[0], bin, bin)
			continue
		}
		src := goSource(t, filepath.Join(repoRoot, built[i]))
		if src == "" {
			t.Errorf("service %s runs %s, but %s has no Go source", name, bin, built[i])
			continue
		}
		for _, arg := range s.Command {
			var word string
			switch {
			case strings.HasPrefix(arg, "-"):
				word, _, _ = strings.Cut(strings.TrimLeft(arg, "-"), "=")
			case arg == s.Command[0] && !strings.HasPrefix(arg, "/") && !strings.Contains(arg, ":"):
				word = arg // a subcommand
			default:
				continue
			}
			if !strings.Contains(src, strconv.Quote(word)) {
				t.Errorf("service %s: %s %q: cmd/%s defines no %q", name, bin, arg, bin, word)
			}
		}
	}
}

// goSource concatenates the non-test Go files under dir.
func goSource(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		data, err := os.ReadFile(p)
		if err == nil {
			b.Write(data)
		}
		return nil
	})
	return b.String()
}
