// Package qemu is the QEMU provider: it runs each microVM as a
// `qemu-system-x86_64 -M microvm` process detached from flintlockd and
// controls it over QMP.
//
// A VMM process is a child started in a session of its own (not
// -daemonize) by a process.Supervisor: flintlockd knows its pid at once,
// reaps it and reads its exit status while it lives, and the process
// survives a restart of the daemon (under systemd, the unit needs
// KillMode=process). A restarted daemon finds its VMMs again by the uid
// marker in their command line (-name guest=<uid>), through the pid file
// or, when that is missing, a scan of /proc, and waits on them through
// pidfds.
//
// Files in the VM folder: vmm.cmdline (the command line, for operators; its
// presence also means a VMM was started there), vmm.pid (written by QEMU),
// qmp.sock, console.log (the serial console, appended to), vmm.log
// (QEMU's own output, virtiofsd's and the provider's notes, appended to)
// and virtiofs-<uid>-<n>.sock per shared folder (see virtiofs.go).
package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
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
	// Virtiofsd serves shared folders (virtio-fs). Default: the first of
	// process.VirtiofsdCandidates found; without one, VMs with shared
	// folders are refused (Capabilities.VirtioFS is false).
	Virtiofsd string
	// ExtraArgs are appended to every QEMU command line.
	ExtraArgs []string
	// User is who QEMU runs as (the zero value: root, the daemon's own
	// identity). See privilege.go for what an unprivileged QEMU is given.
	User process.User
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Provider runs microVMs with QEMU. It is safe for concurrent use.
type Provider struct {
	opts   Options
	binary string
	log    *slog.Logger
	tscKHz func() int
	sup    *process.Supervisor
	// virtiofsd is nil when no virtiofsd was found.
	virtiofsd *process.Virtiofsd

	mu     sync.Mutex
	probes map[probeKey]*probe
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
		opts:   opts,
		binary: bin,
		log:    opts.Logger.With("provider", Name),
		probes: map[probeKey]*probe{},
	}
	vfsd, err := process.LookupVirtiofsd(opts.Virtiofsd)
	if err != nil {
		return nil, err
	}
	if vfsd != "" {
		p.virtiofsd = &process.Virtiofsd{Binary: vfsd, StartTimeout: opts.StartTimeout, Logger: p.log}
	}
	p.sup = process.NewSupervisor(process.SupervisorOptions{
		UIDOf:            func(argv []string) string { return argvUID(argv, bin) },
		VMMWritesPidFile: true, // -pidfile
		Logger:           p.log,
	})
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
	return vmm.Capabilities{NoCloudDisk: true, VirtioFS: p.virtiofsd != nil, MacVTap: true, Qcow2: true}
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
	if err := p.validateShares(vm); err != nil {
		return vmm.Status{}, err
	}
	unlock, pid, err := p.sup.Claim(ctx, vm.UID, vm.Dir)
	if err != nil {
		return vmm.Status{}, err
	}
	defer unlock()
	if pid != 0 { // never a second VMM for one VM
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
	qmpL, err := process.ListenUnix(sock)
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
		f, what, err := process.OpenNet(n, false)
		if err != nil {
			return vmm.Status{}, fmt.Errorf("vm %q: %w", vm.UID, err)
		}
		l.tapFDs[i] = 3 + len(files)
		comments = append(comments, fmt.Sprintf("fd %d: %s", l.tapFDs[i], what))
		files = append(files, f)
	}
	for i := range vm.SharedDirs { // started below, once vmm.log has the start note
		l.fsSockets = append(l.fsSockets, process.SocketArg(vm.Dir, process.VirtiofsSocketName(vm.UID, i)))
	}
	argv := buildArgs(l)

	if err := os.WriteFile(filepath.Join(vm.Dir, process.CmdlineFile), []byte(process.FormatCmdline(argv, comments)), 0o640); err != nil {
		return vmm.Status{}, fmt.Errorf("vm %q: %w", vm.UID, err)
	}
	for _, name := range []string{process.ConsoleFile, process.LogFile} {
		if err := process.AppendNote(filepath.Join(vm.Dir, name), process.StartNote); err != nil {
			return vmm.Status{}, fmt.Errorf("vm %q: %w", vm.UID, err)
		}
	}
	logf, err := process.OpenAppend(filepath.Join(vm.Dir, process.LogFile))
	if err != nil {
		return vmm.Status{}, fmt.Errorf("vm %q: %w", vm.UID, err)
	}
	files = append(files, logf) // closed with the others; not in ExtraFiles
	if _, err := p.startShares(ctx, vm, logf); err != nil {
		return vmm.Status{}, fmt.Errorf("vm %q: %w", vm.UID, err)
	}
	defer func() {
		if err != nil { // runs after the VMM is killed (deferred later)
			if serr := p.stopShares(vm.UID, vm.Dir); serr != nil {
				p.log.Warn("cannot stop virtiofsd", "uid", vm.UID, "error", serr)
			}
		}
	}()
	if err := grant(p.opts.User, vm); err != nil {
		return vmm.Status{}, fmt.Errorf("vm %q: %w", vm.UID, err)
	}
	cmd := &exec.Cmd{Path: p.binary, Args: argv, Dir: vm.Dir, Stdout: logf, Stderr: logf, ExtraFiles: files[:len(files)-1],
		SysProcAttr: p.opts.User.SysProcAttr(accel.Accel == AccelKVM)}
	c, err := p.sup.Launch(vm.UID, vm.Dir, cmd)
	// Our copies go now: with QEMU the only holder of the QMP socket, its
	// exit fails our connection at once.
	for _, f := range files {
		f.Close()
	}
	files = nil
	if err != nil {
		return vmm.Status{}, fmt.Errorf("vm %q: %w", vm.UID, err)
	}
	defer func() {
		if err != nil { // never leave a half-started VMM behind
			_ = process.AppendNote(filepath.Join(vm.Dir, process.LogFile), "start failed: "+err.Error())
			p.sup.Kill(c)
		}
	}()

	// QEMU accepts the connection queued on its socket once it is ready.
	rctx, cancel := context.WithTimeout(ctx, p.opts.StartTimeout)
	defer cancel()
	var qs qmpStatus
	if qerr := qmpDo(rctx, sock, "query-status", nil, &qs); qerr != nil {
		select {
		case <-c.Done():
			return vmm.Status{}, fmt.Errorf("vm %q: qemu exited during start: %s", vm.UID, p.sup.Exited(vm.UID, vm.Dir).Reason)
		case <-time.After(100 * time.Millisecond):
		}
		return vmm.Status{}, fmt.Errorf("vm %q: qemu %d did not answer: %w", vm.UID, c.Pid, qerr)
	}
	st := statusOf(c.Pid, qs)
	p.log.Info("vmm started", "uid", vm.UID, "pid", c.Pid, "accel", accel.Accel, "user", p.opts.User.Name, "state", st.State, "elapsed", time.Since(started))
	return st, nil
}

// statusOf maps query-status to a vmm.Status.
func statusOf(pid int, qs qmpStatus) vmm.Status {
	st := vmm.Status{State: vmm.StatePaused, Pid: pid}
	switch {
	case qs.Running:
		st.State = vmm.StateRunning
	case qs.Status == "guest-panicked" || qs.Status == "internal-error":
		st.State = vmm.StateFailed // the guest is dead; the process lingers
		st.Reason = "qemu status " + qs.Status
	case qs.Status != "prelaunch" && qs.Status != "paused":
		st.Reason = "qemu status " + qs.Status // e.g. io-error, shutdown
	}
	return st
}

// Status implements vmm.Provider.
func (p *Provider) Status(ctx context.Context, uid, dir string) (vmm.Status, error) {
	return p.sup.Status(ctx, uid, dir, p.status)
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
	return p.sup.Unanswered(ctx, uid, dir, pid, "qemu", err)
}

// Resume implements vmm.Provider.
func (p *Provider) Resume(ctx context.Context, vm vmm.VM) error {
	if _, err := p.sup.Running(vm.UID, vm.Dir); err != nil {
		return err
	}
	qctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	if err := qmpDo(qctx, filepath.Join(vm.Dir, qmpSocket), "cont", nil, nil); err != nil {
		return fmt.Errorf("vm %q: resume: %w", vm.UID, err)
	}
	return nil
}

// Stop implements vmm.Provider: ACPI power button (system_powerdown) and up
// to timeout for the guest to power off, then QMP quit, then SIGKILL. A
// cancelled ctx skips to SIGKILL.
func (p *Provider) Stop(ctx context.Context, uid, dir string, timeout time.Duration) error {
	unlock, err := p.sup.LockStop(ctx, uid, dir)
	if err != nil {
		return err
	}
	defer unlock()
	sock := filepath.Join(dir, qmpSocket)
	qmp := func(cmd string) func(context.Context) error {
		return func(ctx context.Context) error { return qmpDo(ctx, sock, cmd, nil, nil) }
	}
	err = p.sup.Stop(ctx, uid, dir, timeout, process.StopSteps{
		Graceful: qmp("system_powerdown"),
		Quit:     qmp("quit"),
	})
	if err != nil {
		return err
	}
	// Once QEMU has gone its virtiofsd daemons exit by themselves; this
	// ends those that did not (QEMU never connected, a stuck daemon).
	if err := p.stopShares(uid, dir); err != nil {
		return fmt.Errorf("vm %q: %w", uid, err)
	}
	return nil
}

// Wait implements vmm.Provider.
func (p *Provider) Wait(ctx context.Context, uid, dir string) (<-chan struct{}, error) {
	return p.sup.Wait(ctx, uid, dir)
}
