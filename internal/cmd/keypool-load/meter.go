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
// system, in the kernel's 10 ms ticks), the load tool's own, the commands Redis
// ran and its CPU time (INFO commandstats and cpu), and, with a server, the
// whole machine's busy time (/proc/stat), which tells what other work ran
// alongside. A zero meter reads only the load tool's own CPU.
type meter struct {
	proc      procfs.FS
	serverPID int           // 0: no server process to read
	redis     *redis.Client // nil: no Redis to read

	server0, self0, machine0, redisCPU0 float64
	cmds0                               map[string]int64
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
	server   float64 // CPU seconds; valid when hasServer
	self     float64
	machine  float64          // the machine's busy CPU seconds; valid when hasServer
	redis    map[string]int64 // commands by name; valid when hasRedis
	redisCPU float64          // Redis's CPU seconds; valid when hasRedis
	// hasServer: server and machine were read; hasRedis: redis and redisCPU.
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
		if m.machine0, err = m.machineCPU(); err != nil {
			return err
		}
	}
	if m.redis != nil {
		if m.cmds0, m.redisCPU0, err = m.redisInfo(ctx); err != nil {
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
		machine, err := m.machineCPU()
		if err != nil {
			return u, err
		}
		u.server, u.machine, u.hasServer = cpu-m.server0, machine-m.machine0, true
	}
	if m.redis != nil {
		cmds, cpu, err := m.redisInfo(ctx)
		if err != nil {
			return u, err
		}
		u.redis, u.redisCPU, u.hasRedis = commandsSince(m.cmds0, cmds), cpu-m.redisCPU0, true
	}
	return u, nil
}

// machineCPU is the time every CPU of the machine spent running processes, or
// taken by the hypervisor for others (/proc/stat: user, nice, system and
// steal; guest time is counted in user already), in seconds. Interrupt time is
// left out: the kernel charges it to no process, and most of it is the
// loopback traffic of the run itself.
func (m *meter) machineCPU() (float64, error) {
	st, err := m.proc.Stat()
	if err != nil {
		return 0, fmt.Errorf("machine CPU time: %w", err)
	}
	c := st.CPUTotal
	return c.User + c.Nice + c.System + c.Steal, nil
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

// redisInfo reads the commands Redis ran and its CPU time in one INFO.
func (m *meter) redisInfo(ctx context.Context) (map[string]int64, float64, error) {
	info, err := m.redis.Info(ctx, "commandstats", "cpu").Result()
	if err != nil {
		return nil, 0, fmt.Errorf("redis INFO commandstats cpu: %w", err)
	}
	cmds, err := parseCommandStats(info)
	if err != nil {
		return nil, 0, err
	}
	cpu, err := parseRedisCPU(info)
	return cmds, cpu, err
}

// parseRedisCPU reads the CPU time of the Redis process from INFO cpu
// (used_cpu_sys plus used_cpu_user, in seconds).
func parseRedisCPU(info string) (float64, error) {
	var total float64
	found := 0
	for line := range strings.Lines(info) {
		name, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || name != "used_cpu_sys" && name != "used_cpu_user" {
			continue
		}
		secs, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, fmt.Errorf("redis INFO cpu: %s: %w", name, err)
		}
		total += secs
		found++
	}
	if found != 2 {
		return 0, fmt.Errorf("redis INFO cpu: used_cpu_sys and used_cpu_user missing")
	}
	return total, nil
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
		other := u.machine - u.server - u.self
		if u.hasRedis {
			other -= u.redisCPU
		}
		others := div(max(0, other), r.Elapsed)
		r.OtherCores = &others
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
