package process

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

// Supervisor tracks the VMM processes of one provider. A VMM is a child
// started in a session of its own: the Supervisor knows its pid at once,
// reaps it and keeps its exit status while it lives, and the process
// survives a restart of the daemon. A restarted daemon finds its VMMs by
// the uid marker on their command line (SupervisorOptions.UIDOf), through
// the pid file or, failing that, a scan of /proc, and waits on them
// through pidfds. It is safe for concurrent use.
//
// A provider serialises the starts and stops of one VM (LockDir on its
// folder); the Supervisor relies on it: the latest child it started for a
// VM is that VM's only VMM.
type Supervisor struct {
	opts SupervisorOptions
	log  *slog.Logger

	mu       sync.Mutex
	children map[string]*Child // uid -> the latest VMM started here
	watches  map[int]*watch    // pid -> exit watcher shared by Wait callers
}

// SupervisorOptions configure a Supervisor.
type SupervisorOptions struct {
	// UIDOf returns the VM uid an argument vector of this provider's
	// VMMs carries, or "" when argv is not one (required).
	UIDOf func(argv []string) string
	// VMMWritesPidFile: the VMM writes PidFile itself (QEMU's -pidfile),
	// so Launch does not.
	VMMWritesPidFile bool
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Child is a VMM process this Supervisor started (and so reaps).
type Child struct {
	Pid   int
	dir   string
	done  chan struct{}    // closed once reaped
	state *os.ProcessState // set before done closes
}

// Done is closed once the process has exited and been reaped.
func (c *Child) Done() <-chan struct{} { return c.done }

func (c *Child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// watch is a pidfd watcher on a VMM an earlier daemon started.
type watch struct {
	uid  string
	done chan struct{}
}

// NewSupervisor returns a Supervisor.
func NewSupervisor(opts SupervisorOptions) *Supervisor {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Supervisor{opts: opts, log: opts.Logger, children: map[string]*Child{}, watches: map[int]*watch{}}
}

// Launch starts cmd detached from the daemon (see StartDetached), writes
// the pid file in dir (unless the VMM does) and reaps the process when it
// exits. The caller wrote CmdlineFile before: Find relies on it.
func (s *Supervisor) Launch(uid, dir string, cmd *exec.Cmd) (*Child, error) {
	if err := StartDetached(cmd); err != nil {
		return nil, err
	}
	c := &Child{Pid: cmd.Process.Pid, dir: dir, done: make(chan struct{})}
	s.mu.Lock()
	s.children[uid] = c
	s.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		c.state = cmd.ProcessState
		s.log.Info("vmm exited", "uid", uid, "pid", c.Pid, "status", c.state.String())
		close(c.done)
	}()
	if s.opts.VMMWritesPidFile {
		return c, nil
	}
	if err := os.WriteFile(filepath.Join(dir, PidFile), []byte(strconv.Itoa(c.Pid)+"\n"), 0o640); err != nil {
		s.Kill(c)
		return nil, fmt.Errorf("pid file: %w", err)
	}
	return c, nil
}

// Kill ends a child at once and returns once it is reaped.
func (s *Supervisor) Kill(c *Child) {
	if h, err := Open(c.Pid); err == nil {
		if !c.exited() {
			_ = h.Signal(syscall.SIGKILL)
		}
		h.Close()
	}
	<-c.done
}

// Ours reports whether pid is a live VMM of VM uid.
func (s *Supervisor) Ours(pid int, uid string) bool {
	if !Running(pid) {
		return false
	}
	argv, err := Cmdline(pid)
	return err == nil && s.opts.UIDOf(argv) == uid
}

// Find returns the pid of the VMM of VM uid, or 0 when none runs. The pid
// file may be missing (a daemon killed between start and writing it) or
// stale (a pid reused since), so it is checked against the process and
// /proc is scanned when it does not fit.
func (s *Supervisor) Find(uid, dir string) (int, error) {
	// Our own unreaped child cannot have lost its pid to another process;
	// this also covers the instant between fork and exec.
	s.mu.Lock()
	c := s.children[uid]
	s.mu.Unlock()
	if c != nil && c.dir == dir {
		if !c.exited() && Running(c.Pid) {
			return c.Pid, nil
		}
		if c.exited() {
			// Starts are serialised per VM: the child we reaped was the
			// last VMM of this VM.
			return 0, nil
		}
	}
	// Launch follows the writing of the command line: without it, no VMM
	// of ours ever ran in dir and /proc need not be scanned.
	if _, err := os.Stat(filepath.Join(dir, CmdlineFile)); errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if pid, err := ReadPidFile(filepath.Join(dir, PidFile)); err == nil && s.Ours(pid, uid) {
		return pid, nil
	}
	pids, err := Find(func(argv []string) bool { return s.opts.UIDOf(argv) == uid })
	if err != nil {
		return 0, err
	}
	switch len(pids) {
	case 0:
		return 0, nil
	case 1:
	default:
		s.log.Error("several vmm processes for one vm", "uid", uid, "pids", pids)
	}
	return pids[0], nil
}

// Claim serialises a start of VM uid: it locks dir (see LockDir) and
// returns the pid of the VMM already running for uid, 0 when none does,
// for a VM never gets a second VMM. The caller holds the lock until it
// calls unlock.
func (s *Supervisor) Claim(ctx context.Context, uid, dir string) (unlock func(), pid int, err error) {
	unlock, err = LockDir(ctx, dir)
	if err != nil {
		return nil, 0, fmt.Errorf("vm %q: %w", uid, err)
	}
	if pid, err = s.Find(uid, dir); err != nil {
		unlock()
		return nil, 0, fmt.Errorf("vm %q: %w", uid, err)
	}
	return unlock, pid, nil
}

// LockStop locks dir for a stop of VM uid (see LockDir). A folder that is
// gone is no error, for a stray VMM is still to be stopped: unlock then
// does nothing.
func (s *Supervisor) LockStop(ctx context.Context, uid, dir string) (unlock func(), err error) {
	unlock, err = LockDir(ctx, dir)
	switch {
	case err == nil:
		return unlock, nil
	case errors.Is(err, fs.ErrNotExist):
		return func() {}, nil
	}
	return nil, fmt.Errorf("vm %q: %w", uid, err)
}

// Running returns the pid of the running VMM of VM uid, or an
// errdefs.ErrFailedPrecondition error when none runs.
func (s *Supervisor) Running(uid, dir string) (int, error) {
	pid, err := s.Find(uid, dir)
	if err != nil {
		return 0, fmt.Errorf("vm %q: %w", uid, err)
	}
	if pid == 0 {
		return 0, fmt.Errorf("vm %q: no vmm process: %w", uid, errdefs.ErrFailedPrecondition)
	}
	return pid, nil
}

// Status is the status of VM uid: Exited's when its VMM does not run,
// else what live (the provider asking VMM pid) says.
func (s *Supervisor) Status(ctx context.Context, uid, dir string, live func(ctx context.Context, uid, dir string, pid int) (vmm.Status, error)) (vmm.Status, error) {
	pid, err := s.Find(uid, dir)
	if err != nil {
		return vmm.Status{}, fmt.Errorf("vm %q: %w", uid, err)
	}
	if pid == 0 {
		return s.Exited(uid, dir), nil
	}
	return live(ctx, uid, dir, pid)
}

// Unanswered is the status of VM uid when its VMM pid did not answer a
// status query (err; what names the VMM): the API hangs up on a VMM that
// is exiting, so it is given a moment to exit; one that still runs is
// reported running, with the error.
func (s *Supervisor) Unanswered(ctx context.Context, uid, dir string, pid int, what string, err error) (vmm.Status, error) {
	if s.WaitExit(ctx, pid, uid, 500*time.Millisecond) {
		return s.Exited(uid, dir), nil
	}
	return vmm.Status{State: vmm.StateRunning, Pid: pid}, fmt.Errorf("vm %q: %s %d: %w", uid, what, pid, err)
}

// Exited is the status of a VM whose VMM does not run: not started when no
// VMM was ever started in dir, else exited with the reason.
func (s *Supervisor) Exited(uid, dir string) vmm.Status {
	if _, err := os.Stat(filepath.Join(dir, CmdlineFile)); errors.Is(err, fs.ErrNotExist) {
		return vmm.Status{State: vmm.StateNotStarted}
	}
	exit := ""
	s.mu.Lock()
	c := s.children[uid]
	s.mu.Unlock()
	if c != nil && c.dir == dir {
		// The process is gone or a zombie: the reaper is about to finish.
		select {
		case <-c.done:
			exit = c.state.String()
		case <-time.After(time.Second):
		}
	}
	reason := ExitReason(LastRunLines(filepath.Join(dir, ConsoleFile)), LastRunLines(filepath.Join(dir, LogFile)), exit)
	return vmm.Status{State: vmm.StateExited, Reason: reason}
}

// WaitExit waits up to d for VMM pid of uid to exit and reports whether it
// has.
func (s *Supervisor) WaitExit(ctx context.Context, pid int, uid string, d time.Duration) bool {
	h, err := Open(pid)
	if err != nil {
		return true
	}
	defer h.Close()
	if !s.Ours(pid, uid) {
		return true
	}
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return h.Wait(wctx) == nil
}

// Wait returns a channel closed when the running VMM of uid exits; it is
// closed already when none runs.
func (s *Supervisor) Wait(ctx context.Context, uid, dir string) (<-chan struct{}, error) {
	pid, err := s.Find(uid, dir)
	if err != nil {
		return nil, fmt.Errorf("vm %q: %w", uid, err)
	}
	closed := make(chan struct{})
	close(closed)
	if pid == 0 {
		return closed, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.children[uid]; c != nil && c.Pid == pid {
		return c.done, nil
	}
	if w := s.watches[pid]; w != nil && w.uid == uid {
		return w.done, nil
	}
	h, err := Open(pid)
	if errdefs.IsNotFound(err) {
		return closed, nil
	}
	if err != nil {
		return nil, fmt.Errorf("vm %q: %w", uid, err)
	}
	if !s.Ours(pid, uid) { // pid reused since Find
		h.Close()
		return closed, nil
	}
	w := &watch{uid: uid, done: make(chan struct{})}
	s.watches[pid] = w
	go func() {
		_ = h.Wait(context.Background())
		h.Close()
		s.mu.Lock()
		if s.watches[pid] == w {
			delete(s.watches, pid)
		}
		s.mu.Unlock()
		close(w.done)
	}()
	return w.done, nil
}

// StopSteps are a provider's ways to end its VMM, tried in order.
type StopSteps struct {
	// Graceful asks the guest to power off (ACPI power button,
	// Ctrl-Alt-Del); the guest gets the Stop timeout to do it. Nil skips
	// the step.
	Graceful func(ctx context.Context) error
	// Quit asks the VMM itself to exit (nil: SIGTERM); it gets QuitWait.
	Quit func(ctx context.Context) error
}

// QuitWait is how long Stop waits after Quit before SIGKILL.
const QuitWait = 3 * time.Second

// Stop ends the VMM of uid: Graceful and up to timeout for the guest to
// power off, then Quit and up to QuitWait, then SIGKILL. A cancelled ctx
// skips to SIGKILL. A VMM that does not run is no error. The caller holds
// the folder lock.
func (s *Supervisor) Stop(ctx context.Context, uid, dir string, timeout time.Duration, steps StopSteps) error {
	pid, err := s.Find(uid, dir)
	if err != nil {
		return fmt.Errorf("vm %q: %w", uid, err)
	}
	if pid == 0 {
		return nil
	}
	h, err := Open(pid)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("vm %q: %w", uid, err)
	}
	defer h.Close()
	if !s.Ours(pid, uid) { // exited between Find and Open
		return nil
	}
	log := s.log.With("uid", uid, "pid", pid)
	logPath := filepath.Join(dir, LogFile)
	waitFor := func(d time.Duration) bool {
		wctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return h.Wait(wctx) == nil
	}
	call := func(name string, f func(context.Context) error) error {
		_ = AppendNote(logPath, "stop: "+name)
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return f(cctx)
	}

	stopped := false
	if timeout > 0 && steps.Graceful != nil {
		if err := call("graceful", steps.Graceful); err != nil {
			log.Info("vmm graceful stop failed", "error", err)
		} else {
			stopped = waitFor(timeout)
		}
	}
	if !stopped && ctx.Err() == nil {
		quit := steps.Quit
		if quit == nil {
			quit = func(context.Context) error { return h.Signal(syscall.SIGTERM) }
		}
		if err := call("quit", quit); err != nil && !h.Exited() {
			log.Info("vmm quit failed", "error", err)
		}
		stopped = waitFor(QuitWait)
	}
	if !stopped {
		_ = AppendNote(logPath, "stop: SIGKILL")
		if err := h.Signal(syscall.SIGKILL); err != nil {
			return fmt.Errorf("vm %q: %w", uid, err)
		}
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := h.Wait(kctx); err != nil {
			return fmt.Errorf("vm %q: vmm %d survived SIGKILL: %w", uid, pid, err)
		}
	}
	// When we are its parent, return once it is reaped: no zombie remains.
	s.mu.Lock()
	c := s.children[uid]
	s.mu.Unlock()
	if c != nil && c.Pid == pid {
		<-c.done
	}
	log.Info("vmm stopped")
	return nil
}

// WaitReady polls ready until it succeeds, the child exits (the error then
// carries the exit reason) or ctx is done.
func (s *Supervisor) WaitReady(ctx context.Context, uid, dir string, c *Child, ready func(context.Context) error) error {
	wait := 2 * time.Millisecond
	for {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		err := ready(rctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-c.done:
			return fmt.Errorf("vmm exited during start: %s", s.Exited(uid, dir).Reason)
		case <-ctx.Done():
			return fmt.Errorf("vmm %d did not answer: %w (%v)", c.Pid, ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}
