package app

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/envoy-keypool/envoy-keypool/config"
)

// listenGRPC opens the ext_proc listener: TCP, or a Unix domain socket with the
// configured file mode. It returns the listener and the address to report.
func listenGRPC(l config.Listen) (net.Listener, string, error) {
	if l.IsUnix() {
		lis, err := listenUnix(l.SocketPath(), l.SocketFileMode())
		if err != nil {
			return nil, "", fmt.Errorf("listen.grpc: %w", err)
		}
		return lis, config.UnixPrefix + l.SocketPath(), nil
	}
	lis, err := net.Listen("tcp", l.GRPC)
	if err != nil {
		return nil, "", fmt.Errorf("listen.grpc: %w", err)
	}
	return lis, lis.Addr().String(), nil
}

// listenUnix listens on a Unix domain socket at path whose file has mode from the
// first connection on. Binding creates the file with the process umask's mode, so
// the socket is bound inside a private directory (0700: nobody else can reach it
// there), given its mode, and only then renamed into place. A stale socket left by a
// crash is removed; any other file at path, or a socket someone is serving on, is
// an error.
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	private, err := os.MkdirTemp(dir, ".envoy-keypool-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(private)
	tmp := filepath.Join(private, "s")
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	// The listener would unlink the temporary name on Close; the socket lives at path.
	lis.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, mode); err != nil {
		lis.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		lis.Close()
		return nil, err
	}
	return &unixListener{UnixListener: lis, path: path}, nil
}

func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%s: another process is serving on this socket", path)
	}
	return os.Remove(path)
}

// unixListener removes its socket file when closed, so that a clean stop leaves
// nothing behind.
type unixListener struct {
	*net.UnixListener
	path string
}

// Addr reports the socket's path, not the private name it was bound under.
func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	if rmErr := os.Remove(l.path); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
		err = errors.Join(err, rmErr)
	}
	return err
}
