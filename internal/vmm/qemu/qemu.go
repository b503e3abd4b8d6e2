// Package qemu is the QEMU provider: it runs each microVM as a
// `qemu-system-x86_64 -M microvm` process detached from flintlockd and
// controls it over QMP.
//
// A VMM process is a child started in a session of its own (not
// -daemonize): flintlockd knows its pid at once, reaps it and reads its exit
// status while it lives, and the process survives a restart of the daemon
// (under systemd, the unit needs KillMode=process). A restarted daemon finds
// its VMMs again by the uid marker in their command line (-name
// guest=<uid>), through the pid file or, when that is missing, a scan of
// /proc, and waits on them through pidfds.
//
// Files in the VM folder: vmm.cmdline (the command line, for operators; its
// presence also means a VMM was started there), vmm.pid (written by QEMU),
// qmp.sock, console.log (the serial console, appended to) and vmm.log
// (QEMU's own output and the provider's notes, appended to).
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// Name is the provider's name in MicroVMSpec.provider.
const Name = "qemu"

// Options configure the provider. The zero value is usable.
type Options struct {
	// Binary is the QEMU system emulator (default "qemu-system-x86_64",
	// looked up in PATH).
	Binary string
	// Accel is AccelAuto (default: KVM when it boots the guest's kernel,
	// else TCG), AccelKVM or AccelTCG.
	Accel string
	// ProbeTimeout bounds the KVM boot probe (default 3s).
	ProbeTimeout time.Duration
	// TSCkHz is the TSC frequency TCG guests are told (tsc_early_khz);
	// 0 measures the host's, which TCG guests read.
	TSCkHz int
	// StartTimeout bounds how long Start waits for QMP to answer
	// (default 10s).
	StartTimeout time.Duration
	// ExtraArgs are appended to every QEMU command line.
	ExtraArgs []string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Provider runs microVMs with QEMU. It is safe for concurrent use.
type Provider struct {
	opts   Options
	binary string
	log    *slog.Logger
	tscKHz func() int

	mu       sync.Mutex
	children map[string]*child // uid -> the latest VMM this provider started
	watches  map[int]*watch    // pid -> exit watcher shared by Wait callers
	probes   map[probeKey]*probe
}

// child is a VMM process this provider started (and so reaps).
type child struct {
	pid   int
	dir   string
	done  chan struct{}    // closed once reaped
	state *os.ProcessState // set before done closes
}

func (c *child) exited() bool {
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

var _ vmm.Provider = (*Provider)(nil)

// New returns a provider; it fails when the QEMU binary is not found.
func New(opts Options) (*Provider, error) {
	if opts.Binary == "" {
		opts.Binary = "qemu-system-x86_64"
	}
	switch opts.Accel {
	case "":
		opts.Accel = AccelAuto
	case AccelAuto, AccelKVM, AccelTCG:
	default:
		return nil, fmt.Errorf("qemu accel %q (want auto, kvm or tcg): %w", opts.Accel, errdefs.ErrInvalidArgument)
	}
	if opts.ProbeTimeout <= 0 {
		opts.ProbeTimeout = 3 * time.Second
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	bin, err := exec.LookPath(opts.Binary)
	if err != nil {
		return nil, fmt.Errorf("qemu binary: %w", err)
	}
	p := &Provider{
		opts:     opts,
		binary:   bin,
		log:      opts.Logger.With("provider", Name),
		children: map[string]*child{},
		watches:  map[int]*watch{},
		probes:   map[probeKey]*probe{},
	}
	p.tscKHz = sync.OnceValue(func() int {
		if opts.TSCkHz > 0 {
			return opts.TSCkHz
		}
		if khz := measureTSCkHz(); khz > 100_000 && khz < 10_000_000 {
			return khz
		}
		p.log.Warn("cannot measure the host TSC frequency; telling TCG guests 2 GHz")
		return 2_000_000
	})
	return p, nil
}

// Name implements vmm.Provider.
func (p *Provider) Name() string { return Name }

// Capabilities implements vmm.Provider.
func (p *Provider) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{NoCloudDisk: true, VirtioFS: false, MacVTap: true}
}

var uidPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func validate(vm vmm.VM) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("vm %q: %s: %w", vm.UID, fmt.Sprintf(format, a...), errdefs.ErrInvalidArgument)
	}
	switch {
	case !uidPattern.MatchString(vm.UID):
		return bad("uid must be letters, digits, '-' or '_'")
	case !filepath.IsAbs(vm.Dir):
		return bad("folder %q is not absolute", vm.Dir)
	case vm.VCPU < 1:
		return bad("vcpu %d", vm.VCPU)
	case vm.MemoryMB < 16:
		return bad("memory %d MB", vm.MemoryMB)
	case vm.KernelPath == "":
		return bad("no kernel")
	}
	for i, d := range vm.Disks {
		if d.Path == "" {
			return bad("disk %d has no path", i)
		}
		if d.Format != "" && d.Format != "raw" && d.Format != "qcow2" {
			return bad("disk %d format %q", i, d.Format)
		}
	}
	for i, n := range vm.Nets {
		if n.MacVTap && n.HostIndex <= 0 {
			return bad("macvtap %d has no host index", i)
		}
		if !n.MacVTap && n.HostDevice == "" {
			return bad("tap %d has no host device", i)
		}
	}
	return nil
}

// Start implements vmm.Provider. It returns once QMP answers, with the
// guest running (or paused with StartPaused).
func (p *Provider) Start(ctx context.Context, vm vmm.VM) (_ vmm.Status, err error) {
	if err := validate(vm); err != nil {
		return vmm.Status{}, err
	}
	unlock, err := lockDir(ctx, vm.Dir)
	if err != nil {
		return vmm.Status{}, fmt.Errorf("vm %q: %w", vm.UID, err)
	}
	defer unlock()

	// Never a second VMM for one VM.
	pid, err := p.find(vm.UID, vm.Dir)
	if err != nil {
		return vmm.Status{}, fmt.Errorf("vm %q: %w", vm.UID, err)
	}
	if pid != 0 {
		return p.status(ctx, vm.UID, vm.Dir, pid)
	}

	started := time.Now()
	accel, err := p.Accel(ctx, vm.KernelPath)
	if err != nil {
		return vmm.Status{}, fmt.Errorf("vm %q: %w", vm.UID, err)
	}
	l := launch{binary: p.binary, vm: vm, accel: accel.Accel, tapFDs: map[int]int{}, extra: p.opts.ExtraArgs}
	if accel.Accel == AccelTCG {
		l.tscKHz = p.tscKHz()
	}

	// Descriptors QEMU inherits: ExtraFiles[i] is fd 3+i in the child. Our
	// copies are closed once it runs.
	sock := filepath.Join(vm.Dir, qmpSocket)
	qmpL, err := listenUnix(sock)
	if err != nil {
		return vmm.Status{}, fmt.Errorf("vm %q: qmp socket: %w", vm.UID, err)
	}
	files := []*os.File{qmpL}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	l.qmpFD = 3
	comments := []string{fmt.Sprintf("fd 3: listening socket %s", sock)}
	for i, n := range vm.Nets {
		if !n.MacVTap {
			continue
		}
		dev := fmt.Sprintf("/dev/tap%d", n.HostIndex)
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return vmm.Status{}, fmt.Errorf("vm %q: macvtap %q: %w", vm.UID, n.HostDevice, err)
		}
		l.tapFDs[i] = 3 + len(files)
		comments = append(comments, fmt.Sprintf("fd %d: %s (macvtap %s)", l.tapFDs[i], dev, n.HostDevice))
		files = append(files, f)
	}
	argv := buildArgs(l)

	if err := os.WriteFile(filepath.Join(vm.Dir, cmdlineFile), []byte(formatCmdline(argv, comments)), 0o640); err != nil {
		return vmm.Status{}, fmt.Errorf("vm %q: %w", vm.UID, err)
	}
	for _, name := range []string{consoleFile, logFile} {
		if err := appendNote(filepath.Join(vm.Dir, name), "starting vmm"); err != nil {
			return vmm.Status{}, fmt.Errorf("vm %q: %w", vm.UID, err)
		}
	}
	logf, err := os.OpenFile(filepath.Join(vm.Dir, logFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return vmm.Status{}, fmt.Errorf("vm %q: %w", vm.UID, err)
	}
	files = append(files, logf) // closed with the others; not in ExtraFiles
	cmd := &exec.Cmd{Path: p.binary, Args: argv, Dir: vm.Dir, Stdout: logf, Stderr: logf, ExtraFiles: files[:len(files)-1]}
	err = process.StartDetached(cmd)
	// Our copies go now: with QEMU the only holder of the QMP socket, its
	// exit fails our connection at once.
	for _, f := range files {
		f.Close()
	}
	files = nil
	if err != nil {
		return vmm.Status{}, fmt.Errorf("vm %q: %w", vm.UID, err)
	}
	c := p.adopt(vm.UID, vm.Dir, cmd)
	defer func() {
		if err != nil { // never leave a half-started VMM behind
			_ = cmd.Process.Kill()
			<-c.done
		}
	}()

	// QEMU accepts the connection queued on its socket once it is ready.
	rctx, cancel := context.WithTimeout(ctx, p.opts.StartTimeout)
	defer cancel()
	var qs qmpStatus
	if qerr := qmpDo(rctx, sock, "query-status", nil, &qs); qerr != nil {
		select {
		case <-c.done:
			return vmm.Status{}, fmt.Errorf("vm %q: qemu exited during start: %s", vm.UID, p.exited(vm.UID, vm.Dir).Reason)
		case <-time.After(100 * time.Millisecond):
		}
		return vmm.Status{}, fmt.Errorf("vm %q: qemu %d did not answer: %w", vm.UID, c.pid, qerr)
	}
	st := statusOf(c.pid, qs)
	p.log.Info("vmm started", "uid", vm.UID, "pid", c.pid, "accel", accel.Accel, "state", st.State, "elapsed", time.Since(started))
	return st, nil
}

// adopt records a started child and reaps it when it exits.
func (p *Provider) adopt(uid, dir string, cmd *exec.Cmd) *child {
	c := &child{pid: cmd.Process.Pid, dir: dir, done: make(chan struct{})}
	p.mu.Lock()
	p.children[uid] = c
	p.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		c.state = cmd.ProcessState
		p.log.Info("vmm exited", "uid", uid, "pid", c.pid, "status", c.state.String())
		close(c.done)
	}()
	return c
}

// statusOf maps query-status to a vmm.Status.
func statusOf(pid int, qs qmpStatus) vmm.Status {
	st := vmm.Status{State: vmm.StatePaused, Pid: pid}
	switch {
	case qs.Running:
		st.State = vmm.StateRunning
	case qs.Status != "prelaunch" && qs.Status != "paused":
		st.Reason = "qemu status " + qs.Status // e.g. internal-error, io-error
	}
	return st
}

// ours reports whether pid is a live VMM of this VM.
func (p *Provider) ours(pid int, uid string) bool {
	if !process.Running(pid) {
		return false
	}
	argv, err := process.Cmdline(pid)
	return err == nil && argvUID(argv, p.binary) == uid
}

// find returns the pid of the VMM of VM uid, or 0 when none runs. The pid
// file may be missing (QEMU writes it after start) or stale (a pid reused
// since), so it is checked against the process and /proc is scanned when
// it does not fit.
func (p *Provider) find(uid, dir string) (int, error) {
	// Our own unreaped child cannot have lost its pid to another process;
	// this also covers the instant between fork and exec.
	p.mu.Lock()
	c := p.children[uid]
	p.mu.Unlock()
	if c != nil && c.dir == dir {
		if !c.exited() && process.Running(c.pid) {
			return c.pid, nil
		}
		if c.exited() {
			// Starts are serialised per VM: the child we reaped was the
			// last VMM of this VM.
			return 0, nil
		}
	}
	// Start writes the command line before it forks: without it, no VMM
	// of ours ever ran in dir and /proc need not be scanned.
	if _, err := os.Stat(filepath.Join(dir, cmdlineFile)); errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if pid, err := process.ReadPidFile(filepath.Join(dir, pidFile)); err == nil && p.ours(pid, uid) {
		return pid, nil
	}
	pids, err := process.Find(func(argv []string) bool { return argvUID(argv, p.binary) == uid })
	if err != nil {
		return 0, err
	}
	switch len(pids) {
	case 0:
		return 0, nil
	case 1:
	default:
		p.log.Error("several vmm processes for one vm", "uid", uid, "pids", pids)
	}
	return pids[0], nil
}

// Status implements vmm.Provider.
func (p *Provider) Status(ctx context.Context, uid, dir string) (vmm.Status, error) {
	pid, err := p.find(uid, dir)
	if err != nil {
		return vmm.Status{}, fmt.Errorf("vm %q: %w", uid, err)
	}
	if pid == 0 {
		return p.exited(uid, dir), nil
	}
	return p.status(ctx, uid, dir, pid)
}

// qmpTimeout bounds one QMP exchange with a running VMM.
const qmpTimeout = 5 * time.Second

// status asks the VMM pid over QMP.
func (p *Provider) status(ctx context.Context, uid, dir string, pid int) (vmm.Status, error) {
	qctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	var qs qmpStatus
	err := qmpDo(qctx, filepath.Join(dir, qmpSocket), "query-status", nil, &qs)
	if err == nil {
		return statusOf(pid, qs), nil
	}
	// QMP hangs up on a VMM that is exiting: give it a moment.
	if p.waitExit(ctx, pid, uid, 500*time.Millisecond) {
		return p.exited(uid, dir), nil
	}
	return vmm.Status{State: vmm.StateRunning, Pid: pid}, fmt.Errorf("vm %q: qemu %d: %w", uid, pid, err)
}

// waitExit waits up to d for VMM pid to exit and reports whether it has.
func (p *Provider) waitExit(ctx context.Context, pid int, uid string, d time.Duration) bool {
	h, err := process.Open(pid)
	if err != nil {
		return true
	}
	defer h.Close()
	if !p.ours(pid, uid) {
		return true
	}
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return h.Wait(wctx) == nil
}

// exited is the status of a VM whose VMM does not run.
func (p *Provider) exited(uid, dir string) vmm.Status {
	if _, err := os.Stat(filepath.Join(dir, cmdlineFile)); errors.Is(err, fs.ErrNotExist) {
		return vmm.Status{State: vmm.StateNotStarted}
	}
	exit := ""
	p.mu.Lock()
	c := p.children[uid]
	p.mu.Unlock()
	if c != nil && c.dir == dir {
		// The process is gone or a zombie: the reaper is about to finish.
		select {
		case <-c.done:
			exit = c.state.String()
		case <-time.After(time.Second):
		}
	}
	reason := exitReason(lastRunLines(filepath.Join(dir, consoleFile)), lastRunLines(filepath.Join(dir, logFile)), exit)
	return vmm.Status{State: vmm.StateExited, Reason: reason}
}

// Resume implements vmm.Provider.
func (p *Provider) Resume(ctx context.Context, vm vmm.VM) error {
	pid, err := p.find(vm.UID, vm.Dir)
	if err != nil {
		return fmt.Errorf("vm %q: %w", vm.UID, err)
	}
	if pid == 0 {
		return fmt.Errorf("vm %q: no vmm process: %w", vm.UID, errdefs.ErrFailedPrecondition)
	}
	qctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	if err := qmpDo(qctx, filepath.Join(vm.Dir, qmpSocket), "cont", nil, nil); err != nil {
		return fmt.Errorf("vm %q: resume: %w", vm.UID, err)
	}
	return nil
}

// quitWait is how long Stop waits after QMP quit before SIGKILL.
const quitWait = 3 * time.Second

// Stop implements vmm.Provider: ACPI power button (system_powerdown) and up
// to timeout for the guest to power off, then QMP quit, then SIGKILL. A
// cancelled ctx skips to SIGKILL.
func (p *Provider) Stop(ctx context.Context, uid, dir string, timeout time.Duration) error {
	unlock, err := lockDir(ctx, dir)
	switch {
	case err == nil:
		defer unlock()
	case errors.Is(err, fs.ErrNotExist): // folder gone: still stop a stray VMM
	default:
		return fmt.Errorf("vm %q: %w", uid, err)
	}
	pid, err := p.find(uid, dir)
	if err != nil {
		return fmt.Errorf("vm %q: %w", uid, err)
	}
	if pid == 0 {
		return nil
	}
	h, err := process.Open(pid)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("vm %q: %w", uid, err)
	}
	defer h.Close()
	if !p.ours(pid, uid) { // exited between find and Open
		return nil
	}
	log := p.log.With("uid", uid, "pid", pid)
	sock := filepath.Join(dir, qmpSocket)
	logPath := filepath.Join(dir, logFile)
	waitFor := func(d time.Duration) bool {
		wctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return h.Wait(wctx) == nil
	}
	qmp := func(cmd string) error {
		_ = appendNote(logPath, "stop: "+cmd)
		qctx, cancel := context.WithTimeout(ctx, qmpTimeout)
		defer cancel()
		return qmpDo(qctx, sock, cmd, nil, nil)
	}

	stopped := false
	if timeout > 0 {
		if err := qmp("system_powerdown"); err != nil {
			log.Info("vmm powerdown failed", "error", err)
		} else {
			stopped = waitFor(timeout)
		}
	}
	if !stopped && ctx.Err() == nil {
		if err := qmp("quit"); err != nil && !h.Exited() {
			log.Info("vmm quit failed", "error", err)
		}
		stopped = waitFor(quitWait)
	}
	if !stopped {
		_ = appendNote(logPath, "stop: SIGKILL")
		if err := h.Signal(syscall.SIGKILL); err != nil {
			return fmt.Errorf("vm %q: %w", uid, err)
		}
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := h.Wait(kctx); err != nil {
			return fmt.Errorf("vm %q: qemu %d survived SIGKILL: %w", uid, pid, err)
		}
	}
	// When we are its parent, return once it is reaped: no zombie remains.
	p.mu.Lock()
	c := p.children[uid]
	p.mu.Unlock()
	if c != nil && c.pid == pid {
		<-c.done
	}
	log.Info("vmm stopped")
	return nil
}

// Wait implements vmm.Provider.
func (p *Provider) Wait(ctx context.Context, uid, dir string) (<-chan struct{}, error) {
	pid, err := p.find(uid, dir)
	if err != nil {
		return nil, fmt.Errorf("vm %q: %w", uid, err)
	}
	closed := make(chan struct{})
	close(closed)
	if pid == 0 {
		return closed, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.children[uid]; c != nil && c.pid == pid {
		return c.done, nil
	}
	if w := p.watches[pid]; w != nil && w.uid == uid {
		return w.done, nil
	}
	h, err := process.Open(pid)
	if errdefs.IsNotFound(err) {
		return closed, nil
	}
	if err != nil {
		return nil, fmt.Errorf("vm %q: %w", uid, err)
	}
	if !p.ours(pid, uid) { // pid reused since find
		h.Close()
		return closed, nil
	}
	w := &watch{uid: uid, done: make(chan struct{})}
	p.watches[pid] = w
	go func() {
		_ = h.Wait(context.Background())
		h.Close()
		p.mu.Lock()
		if p.watches[pid] == w {
			delete(p.watches, pid)
		}
		p.mu.Unlock()
		close(w.done)
	}()
	return w.done, nil
}
