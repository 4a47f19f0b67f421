package stack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"sync"
	"syscall"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/syncbuf"
)

// Replica is one envoy-keypool process.
type Replica struct {
	// GRPCAddr serves ext_proc and gRPC health; AdminAddr the admin API.
	GRPCAddr, AdminAddr string

	cmd  *exec.Cmd
	done chan struct{} // closed when the process exited
	logs *syncbuf.Buffer
}

var readyLine = regexp.MustCompile(`envoy-keypool ready grpc=(\S+) admin=(\S+)`)

// startReplica runs `binary serve --config configPath` with env and waits for its
// ready line.
func startReplica(ctx context.Context, binary, configPath string, env []string, logTo io.Writer) (*Replica, error) {
	cmd := exec.Command(binary, "serve", "--config", configPath)
	cmd.Env = append(os.Environ(), env...)
	logs := &syncbuf.Buffer{}
	var stderr io.Writer = logs
	if logTo != nil {
		stderr = io.MultiWriter(logs, logTo)
	}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start envoy-keypool: %w", err)
	}
	r := &Replica{cmd: cmd, done: make(chan struct{}), logs: logs}
	ready := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			_, _ = logs.Write(append(sc.Bytes(), '\n'))
			if m := readyLine.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case ready <- m:
				default:
				}
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		close(r.done)
	}()
	select {
	case m := <-ready:
		r.GRPCAddr, r.AdminAddr = m[1], m[2]
		return r, nil
	case <-r.done:
		return nil, fmt.Errorf("envoy-keypool exited before it was ready:\n%s", logs.String())
	case <-ctx.Done():
		r.Kill()
		return nil, fmt.Errorf("waiting for envoy-keypool to be ready: %w\n%s", ctx.Err(), logs.String())
	}
}

// Kill ends the process at once (SIGKILL), as a crash would.
func (r *Replica) Kill() {
	_ = r.cmd.Process.Kill()
	<-r.done
}

// Stop asks the process to shut down (SIGTERM: its drain delay, then a graceful
// stop) and waits until it did or ctx ends, then kills it. It reports how the
// process exited.
func (r *Replica) Stop(ctx context.Context) error {
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	return r.wait(ctx)
}

// StopNow shuts the process down without the drain delay (a second SIGTERM skips
// it), for tearing a stack down, and waits as Stop does. SIGTERM is sent again until
// the process exits: two signals sent back to back may reach it as one (a pending
// standard signal is not queued twice).
func (r *Replica) StopNow(ctx context.Context) error {
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-r.done:
			return r.wait(ctx)
		case <-ctx.Done():
			return r.wait(ctx)
		case <-tick.C:
			_ = r.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
}

func (r *Replica) wait(ctx context.Context) error {
	select {
	case <-r.done:
	case <-ctx.Done():
		r.Kill()
		return fmt.Errorf("envoy-keypool did not stop in time: %w", ctx.Err())
	}
	if code := r.cmd.ProcessState.ExitCode(); code != 0 {
		return fmt.Errorf("envoy-keypool exited with code %d (%s)", code, r.cmd.ProcessState)
	}
	return nil
}

// Exited reports whether the process has ended.
func (r *Replica) Exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// Logs is everything the process wrote (stdout and stderr).
func (r *Replica) Logs() string { return r.logs.String() }

// stopAll stops replicas at once and together within d, returning their errors
// joined.
func stopAll(replicas []*Replica, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	errs := make([]error, len(replicas))
	var wg sync.WaitGroup
	for i, r := range replicas {
		if r.Exited() {
			continue
		}
		wg.Go(func() { errs[i] = r.StopNow(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}
