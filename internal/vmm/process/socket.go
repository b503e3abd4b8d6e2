package process

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Unix sockets of a VM folder: VM folders can be deeper than a socket
// address holds (108 bytes), so every helper here accepts a path of any
// length.

// sunPathMax is the longest path a unix socket address holds.
const sunPathMax = len(unix.RawSockaddrUnix{}.Path) - 1

// SocketArg is how a socket file name in dir is given to a VMM that runs
// with dir as its working directory: the absolute path when it fits in a
// socket address, else the bare name (relative to dir).
func SocketArg(dir, name string) string {
	if p := filepath.Join(dir, name); len(p) <= sunPathMax {
		return p
	}
	return name
}

// shortSocketPath returns a name for the socket at path that fits in a
// socket address: path itself, or /proc/self/fd/N/<base> through an O_PATH
// descriptor of its folder, valid until done is called.
func shortSocketPath(path string) (name string, done func(), err error) {
	if len(path) <= sunPathMax {
		return path, func() {}, nil
	}
	fd, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open socket folder: %w", err)
	}
	return fmt.Sprintf("/proc/self/fd/%d/%s", fd, filepath.Base(path)), func() { _ = unix.Close(fd) }, nil
}

// DialUnix connects to the unix socket at path, however long.
func DialUnix(ctx context.Context, path string) (*net.UnixConn, error) {
	name, done, err := shortSocketPath(path)
	if err != nil {
		return nil, err
	}
	defer done()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", name)
	if err != nil {
		return nil, fmt.Errorf("connect %q: %w", path, err)
	}
	return conn.(*net.UnixConn), nil
}

// ListenUnix creates a listening unix socket at path (replacing a stale
// one) and returns it as a file to hand to a child process, which then
// accepts on it: a client can connect at once, before the child runs.
func ListenUnix(path string) (_ *os.File, err error) {
	if err := RemoveStale(path); err != nil {
		return nil, err
	}
	name, done, err := shortSocketPath(path)
	if err != nil {
		return nil, err
	}
	defer done()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	defer func() {
		if err != nil {
			_ = unix.Close(fd)
		}
	}()
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: name}); err != nil {
		return nil, fmt.Errorf("bind %q: %w", path, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		return nil, fmt.Errorf("listen %q: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}
