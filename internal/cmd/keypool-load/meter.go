package main

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"github.com/prometheus/procfs"
	"github.com/redis/go-redis/v9"
)

// meter reads, at the start and the end of a run's measurement window, what the
// processes around the load spent: the server's CPU time (/proc/PID/stat, user +
// system, in the kernel's 10 ms ticks), the load tool's own, and the commands Redis
// ran (INFO commandstats). A zero meter reads only the load tool's own CPU.
type meter struct {
	proc      procfs.FS
	serverPID int           // 0: no server process to read
	redis     *redis.Client // nil: no Redis to read

	server0, self0 float64
	cmds0          map[string]int64
}

func newMeter(serverPID int, redisAddr string) (*meter, error) {
	m := &meter{serverPID: serverPID}
	if serverPID != 0 {
		fs, err := procfs.NewDefaultFS()
		if err != nil {
			return nil, fmt.Errorf("--server-pid needs /proc: %w", err)
		}
		m.proc = fs
	}
	if redisAddr != "" {
		m.redis = newRedisClient(redisAddr)
	}
	return m, nil
}

func (m *meter) close() {
	if m != nil && m.redis != nil {
		m.redis.Close()
	}
}

// usage is what a meter measured over a window.
type usage struct {
	server    float64 // CPU seconds; valid when hasServer
	self      float64
	redis     map[string]int64 // commands by name; valid when hasRedis
	hasServer bool
	hasRedis  bool
}

func (m *meter) start(ctx context.Context) error {
	var err error
	m.self0 = selfCPU()
	if m.serverPID != 0 {
		if m.server0, err = m.processCPU(); err != nil {
			return err
		}
	}
	if m.redis != nil {
		if m.cmds0, err = m.commands(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (m *meter) stop(ctx context.Context) (usage, error) {
	u := usage{self: selfCPU() - m.self0}
	if m.serverPID != 0 {
		cpu, err := m.processCPU()
		if err != nil {
			return u, err
		}
		u.server, u.hasServer = cpu-m.server0, true
	}
	if m.redis != nil {
		cmds, err := m.commands(ctx)
		if err != nil {
			return u, err
		}
		u.redis, u.hasRedis = commandsSince(m.cmds0, cmds), true
	}
	return u, nil
}

func (m *meter) processCPU() (float64, error) {
	p, err := m.proc.Proc(m.serverPID)
	if err != nil {
		return 0, fmt.Errorf("server process %d: %w", m.serverPID, err)
	}
	st, err := p.Stat()
	if err != nil {
		return 0, fmt.Errorf("server process %d: %w", m.serverPID, err)
	}
	return st.CPUTime(), nil
}

func (m *meter) commands(ctx context.Context) (map[string]int64, error) {
	info, err := m.redis.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, fmt.Errorf("redis INFO commandstats: %w", err)
	}
	return parseCommandStats(info)
}

// parseCommandStats reads the calls of each command from INFO commandstats
// ("cmdstat_get:calls=3,usec=12,…"; subcommands as "cmdstat_client|setinfo").
func parseCommandStats(info string) (map[string]int64, error) {
	calls := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		name, fields, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		cmd, isStat := strings.CutPrefix(name, "cmdstat_")
		if !ok || !isStat {
			continue
		}
		for f := range strings.SplitSeq(fields, ",") {
			if v, found := strings.CutPrefix(f, "calls="); found {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("redis INFO commandstats: %s: %w", name, err)
				}
				calls[cmd] = n
			}
		}
	}
	return calls, sc.Err()
}

// commandsSince are the commands run between two INFO commandstats readings,
// leaving out the meter's own INFO.
func commandsSince(before, after map[string]int64) map[string]int64 {
	d := map[string]int64{}
	for cmd, n := range after {
		if cmd == "info" {
			continue
		}
		if n -= before[cmd]; n > 0 {
			d[cmd] = n
		}
	}
	return d
}

// selfCPU is the load tool's own CPU time (user + system) in seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// fill adds the usage to r, per attempt where that is what compares.
func (u usage) fill(r *result) {
	r.DriverCPUSeconds = u.self
	r.DriverCores = div(u.self, r.Elapsed)
	if u.hasServer {
		cpu := u.server
		r.ServerCPUSeconds = &cpu
		r.ServerCores = div(cpu, r.Elapsed)
		r.ServerCPUPer1000Attempts = 1e6 * div(cpu, float64(r.Attempts)) // ms per 1,000 attempts
	}
	if u.hasRedis {
		r.RedisCommands = u.redis
		var n int64
		for _, v := range u.redis {
			n += v
		}
		r.RedisCommandsTotal = &n
	}
}

// newRedisClient is a client for reading a Redis's INFO: no retries, so that a
// reading is one command.
func newRedisClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
}
