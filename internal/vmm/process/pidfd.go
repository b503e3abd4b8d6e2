package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Handle is a stable reference to one process (a pidfd): unlike a pid it
// cannot come to name another process after this one exits. It works for
// any process, not only our children.
type Handle struct {
	pid int
	f   *os.File // nonblocking pidfd, registered with the Go poller
}

// Open returns a Handle on process pid. A process that does not exist (or
// was already reaped) is errdefs.ErrNotFound. Check the process's identity
// (Cmdline) after Open, not before, to be safe against pid reuse.
func Open(pid int) (*Handle, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("process %d: %w", pid, errdefs.ErrInvalidArgument)
	}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("process %d: %w", pid, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	return &Handle{pid: pid, f: os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))}, nil
}

// Pid is the process id.
func (h *Handle) Pid() int { return h.pid }

// Exited reports whether the process has terminated (a zombie counts as
// terminated).
func (h *Handle) Exited() bool {
	rc, err := h.f.SyscallConn()
	if err != nil {
		return false
	}
	exited := false
	_ = rc.Control(func(fd uintptr) { exited = readable(fd) })
	return exited
}

// Wait blocks until the process terminates or ctx is done. It does not
// reap the process: its parent does that. Calls on one Handle must not
// overlap.
func (h *Handle) Wait(ctx context.Context) error {
	rc, err := h.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("wait for process %d: %w", h.pid, err)
	}
	if err := h.f.SetReadDeadline(time.Time{}); err != nil { // an earlier Wait's
		return fmt.Errorf("wait for process %d: %w", h.pid, err)
	}
	// The pidfd becomes readable when the process exits; the poller wakes
	// us then, and a read deadline set on ctx cancellation wakes us early.
	stop := context.AfterFunc(ctx, func() { _ = h.f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	err = rc.Read(func(fd uintptr) bool { return readable(fd) })
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("wait for process %d: %w", h.pid, err)
	}
	return nil
}

// Signal sends sig to the process; signalling a process that has exited
// is not an error.
func (h *Handle) Signal(sig syscall.Signal) error {
	rc, err := h.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("signal process %d: %w", h.pid, err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.PidfdSendSignal(int(fd), sig, nil, 0)
	}); err != nil {
		return fmt.Errorf("signal process %d: %w", h.pid, err)
	}
	if serr != nil && !errors.Is(serr, unix.ESRCH) {
		return fmt.Errorf("signal process %d: %w", h.pid, serr)
	}
	return nil
}

// Close releases the handle.
func (h *Handle) Close() error { return h.f.Close() }

func readable(fd uintptr) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0 && fds[0].Revents&unix.POLLIN != 0
}
