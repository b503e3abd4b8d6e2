// Package firecracker is the Firecracker provider: it runs each microVM as
// a `firecracker` process (optionally through Firecracker's jailer),
// detached from flintlockd, and configures, boots, pauses and stops it over
// Firecracker's REST API on a unix socket.
//
// # API socket, not --config-file
//
// Firecracker can also boot a whole VM from a --config-file JSON. The
// provider uses the API socket instead, and sends the same documents one
// resource at a time (PUT /machine-config, /boot-source, /drives/{id},
// /network-interfaces/{id}, /mmds/config, /mmds, /metrics, /vsock, then
// /actions InstanceStart), because:
//   - each resource is checked when it is put, and a rejection comes back
//     as a 400 whose fault_message names the resource and the reason; Start
//     returns it. With --config-file a bad document is a process that exits
//     with a log line to dig out.
//   - StartPaused needs the VM configured but not booted: the provider
//     holds back InstanceStart until Resume. --config-file boots at once.
//   - the socket is needed anyway after boot: instance state for Status,
//     PATCH /vm to pause and resume, SendCtrlAltDel for Stop, and the MMDS
//     data store (PUT /mmds; --config-file cannot carry it).
//
// The configuration is also written to vmm.config.json in --config-file
// layout, so an operator can reproduce a VM by hand.
//
// The typed documents are the provider's own small structs, checked field
// by field against the swagger description by the tests, rather than the
// firecracker-go-sdk models: those are generated from the v1.0 API (its
// vsock model requires the since deprecated vsock_id, which current
// Firecracker warns about), and they would bring go-openapi's runtime and
// its dependencies into the daemon for a handful of structs.
//
// # Files and process
//
// Files in the VM folder: vmm.cmdline, vmm.pid (written by the provider),
// firecracker.sock (the API; a symlink into the chroot when jailed),
// console.log (the serial console: Firecracker's stdout, appended to),
// vmm.log (Firecracker's stderr and the provider's notes), firecracker.log
// (Firecracker's logger, configured on the command line so that nothing of
// it lands on the console), firecracker.metrics (its metrics, one JSON
// object per flush), vmm.config.json and, with a guest agent, vsock.sock.
//
// The process model is process.Supervisor's: a detached child, found again
// after a daemon restart by `--id <uid>` on its command line (the jailer
// passes the same --id on to Firecracker), waited on through a pidfd.
//
// The guest boots the uncompressed ELF kernel (boot/vmlinux in the kernel
// images); a bzImage is refused. Firecracker has no macvtap (it opens TAP
// devices by name) and no virtio-fs: Capabilities says so.
package firecracker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// Name is the provider's name in MicroVMSpec.provider.
const Name = "firecracker"

// Files of the provider in a VM folder (besides the process package's).
const (
	apiSocket   = "firecracker.sock"
	logName     = "firecracker.log"
	metricsName = "firecracker.metrics"
)

// Options configure the provider. The zero value runs `firecracker` from
// PATH unjailed.
type Options struct {
	// Binary is the firecracker executable (default "firecracker", looked
	// up in PATH).
	Binary string
	// Jailer, when set, runs Firecracker through its jailer.
	Jailer *Jailer
	// LogLevel is Firecracker's logger level: Error, Warning, Info (the
	// default), Debug or Trace.
	LogLevel string
	// StartTimeout bounds how long Start waits for the API socket
	// (default 10s).
	StartTimeout time.Duration
	// ExtraArgs are appended to Firecracker's command line.
	ExtraArgs []string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Provider runs microVMs with Firecracker. It is safe for concurrent use.
type Provider struct {
	opts   Options
	binary string // absolute
	jailer string // absolute, when jailed
	log    *slog.Logger
	sup    *process.Supervisor
}

var _ vmm.Provider = (*Provider)(nil)

// New returns a provider; it fails when a binary is not found.
func New(opts Options) (*Provider, error) {
	if opts.Binary == "" {
		opts.Binary = "firecracker"
	}
	switch opts.LogLevel {
	case "":
		opts.LogLevel = "Info"
	case "Error", "Warning", "Info", "Debug", "Trace":
	default:
		return nil, fmt.Errorf("firecracker log level %q: %w", opts.LogLevel, errdefs.ErrInvalidArgument)
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	bin, err := process.LookPath(opts.Binary)
	if err != nil {
		return nil, fmt.Errorf("firecracker binary: %w", err)
	}
	p := &Provider{opts: opts, binary: bin, log: opts.Logger.With("provider", Name)}
	if j := opts.Jailer; j != nil {
		jc := *j
		if jc.Binary == "" {
			jc.Binary = "jailer"
		}
		if jc.ChrootBase == "" {
			jc.ChrootBase = "/srv/jailer"
		}
		if jc.CgroupVersion == 0 {
			jc.CgroupVersion = 2
		}
		switch {
		case jc.UID <= 0 || jc.GID <= 0:
			return nil, fmt.Errorf("jailer uid %d gid %d: an unprivileged user is needed: %w", jc.UID, jc.GID, errdefs.ErrInvalidArgument)
		case jc.CgroupVersion != 1 && jc.CgroupVersion != 2:
			return nil, fmt.Errorf("jailer cgroup version %d: %w", jc.CgroupVersion, errdefs.ErrInvalidArgument)
		case !filepath.IsAbs(jc.ChrootBase):
			return nil, fmt.Errorf("jailer chroot base %q is not absolute: %w", jc.ChrootBase, errdefs.ErrInvalidArgument)
		case !strings.Contains(filepath.Base(bin), "firecracker"):
			// The jailer refuses other exec-file names.
			return nil, fmt.Errorf("jailed firecracker binary %q: its name must contain \"firecracker\": %w", bin, errdefs.ErrInvalidArgument)
		}
		if p.jailer, err = process.LookPath(jc.Binary); err != nil {
			return nil, fmt.Errorf("jailer binary: %w", err)
		}
		p.opts.Jailer = &jc
	}
	p.sup = process.NewSupervisor(process.SupervisorOptions{UIDOf: p.argvUID, Logger: p.log})
	return p, nil
}

// Name implements vmm.Provider.
func (p *Provider) Name() string { return Name }

// Capabilities implements vmm.Provider.
func (p *Provider) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{NoCloudDisk: true, VirtioFS: false, MacVTap: false, GuestAgent: true, UncompressedKernel: true}
}

var uidPattern = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

func validate(vm vmm.VM) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("vm %q: %s: %w", vm.UID, fmt.Sprintf(format, a...), errdefs.ErrInvalidArgument)
	}
	switch {
	case !uidPattern.MatchString(vm.UID):
		// The jailer takes ids of letters, digits and '-', at most 64.
		return bad("uid must be 1 to 64 letters, digits or '-'")
	case !filepath.IsAbs(vm.Dir):
		return bad("folder %q is not absolute", vm.Dir)
	case vm.VCPU < 1 || vm.VCPU > 32:
		return bad("vcpu %d (firecracker takes 1 to 32)", vm.VCPU)
	case vm.MemoryMB < 16:
		return bad("memory %d MB", vm.MemoryMB)
	case vm.KernelPath == "":
		return bad("no kernel")
	case len(vm.SharedDirs) > 0:
		return fmt.Errorf("vm %q: firecracker has no virtio-fs: %w", vm.UID, errdefs.ErrInvalidArgument)
	}
	elf, err := process.IsELF(vm.KernelPath)
	if err != nil {
		return fmt.Errorf("vm %q: kernel: %w", vm.UID, err)
	}
	if !elf {
		return bad("kernel %s is not an uncompressed ELF vmlinux (firecracker does not boot a bzImage)", vm.KernelPath)
	}
	for i, d := range vm.Disks {
		if d.Path == "" {
			return bad("disk %d has no path", i)
		}
		if d.Format != "" && d.Format != "raw" {
			return bad("disk %d format %q (firecracker takes raw images)", i, d.Format)
		}
	}
	for i, n := range vm.Nets {
		if n.MacVTap {
			return fmt.Errorf("vm %q: interface %d: firecracker has no macvtap: %w", vm.UID, i, errdefs.ErrInvalidArgument)
		}
		if n.HostDevice == "" {
			return bad("tap %d has no host device", i)
		}
	}
	return nil
}

// argvUID returns the VM uid carried by a Firecracker (or jailer) argument
// vector, or "".
func (p *Provider) argvUID(argv []string) string {
	if len(argv) == 0 {
		return ""
	}
	exe := filepath.Base(argv[0])
	if !strings.Contains(exe, "firecracker") && !strings.Contains(exe, "jailer") &&
		exe != filepath.Base(p.binary) && (p.jailer == "" || exe != filepath.Base(p.jailer)) {
		return ""
	}
	for i := 1; i+1 < len(argv); i++ {
		if argv[i] == "--" {
			break
		}
		if argv[i] == "--id" {
			return argv[i+1]
		}
	}
	return ""
}

// jailOf returns the jail of VM uid, or nil unjailed.
func (p *Provider) jailOf(uid string) *jail {
	if p.opts.Jailer == nil {
		return nil
	}
	return newJail(*p.opts.Jailer, p.jailer, p.binary, uid)
}

// sock is the host path of a VM's API socket.
func sock(dir string) string { return filepath.Join(dir, apiSocket) }

// Start implements vmm.Provider. It returns once the VM is configured and,
// unless StartPaused, booted.
func (p *Provider) Start(ctx context.Context, vm vmm.VM) (_ vmm.Status, err error) {
	if err := validate(vm); err != nil {
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
	fail := func(err error) (vmm.Status, error) { return vmm.Status{}, fmt.Errorf("vm %q: %w", vm.UID, err) }

	// Files: notes, the logger's and metrics' files (Firecracker opens,
	// never creates, them), no stale sockets.
	for _, name := range []string{process.ConsoleFile, process.LogFile} {
		if err := process.AppendNote(filepath.Join(vm.Dir, name), process.StartNote); err != nil {
			return fail(err)
		}
	}
	for _, name := range []string{logName, metricsName} {
		f, err := process.OpenAppend(filepath.Join(vm.Dir, name))
		if err != nil {
			return fail(err)
		}
		f.Close()
	}
	for _, name := range []string{apiSocket, vmm.GuestAgentSocket} {
		if err := process.RemoveStale(filepath.Join(vm.Dir, name)); err != nil {
			return fail(err)
		}
	}

	// Where Firecracker finds its files, and its command line.
	fcArgs := []string{}
	var pth paths
	var argv []string
	j := p.jailOf(vm.UID)
	if j == nil {
		pth = paths{
			kernel: vm.KernelPath, initrd: vm.InitrdPath,
			log: filepath.Join(vm.Dir, logName), metrics: filepath.Join(vm.Dir, metricsName),
			vsock: process.SocketArg(vm.Dir, vmm.GuestAgentSocket),
		}
		for _, d := range vm.Disks {
			pth.drives = append(pth.drives, d.Path)
		}
		fcArgs = append(fcArgs, "--id", vm.UID, "--api-sock", process.SocketArg(vm.Dir, apiSocket))
	} else {
		if pth, err = j.prepare(vm); err != nil {
			_ = j.remove()
			return fail(err)
		}
		defer func() {
			if err != nil { // runs after the VMM is killed, see below
				_ = j.remove()
			}
		}()
		// The host reaches the jail's sockets through the VM folder.
		links := map[string]string{apiSocket: jailAPISocket}
		if vm.GuestAgent {
			links[vmm.GuestAgentSocket] = jailVsock
		}
		for name, target := range links {
			if err := os.Symlink(j.host(target), filepath.Join(vm.Dir, name)); err != nil {
				return fail(err)
			}
		}
		fcArgs = append(fcArgs, "--api-sock", jailAPISocket)
	}
	cfg := buildConfig(vm, pth, p.opts.LogLevel)
	mmds := mmdsDocument(vm.Metadata)
	fcArgs = append(fcArgs, "--log-path", cfg.Logger.LogPath, "--level", cfg.Logger.Level, "--show-level", "--show-log-origin")
	if cfg.MMDSConfig != nil {
		if n := mmdsSize(mmds); n > defaultMMDSLimit {
			// Room for the data store and for the PUT that carries it.
			limit := strconv.Itoa(n + 4096)
			fcArgs = append(fcArgs, "--http-api-max-payload-size", limit, "--mmds-size-limit", limit)
		}
	}
	fcArgs = append(fcArgs, p.opts.ExtraArgs...)
	if j == nil {
		argv = append([]string{p.binary}, fcArgs...)
	} else {
		argv = j.args(p.binary, vm.UID, fcArgs)
	}

	// For operators: the configuration (it may name secrets' files, and
	// the folder is the VM's) and the command line.
	doc, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(vm.Dir, process.ConfigFile), append(doc, '\n'), 0o640); err != nil {
		return fail(err)
	}
	comments := []string{"api socket " + sock(vm.Dir)}
	if j != nil {
		comments = append(comments, "jailed in "+j.root)
	}
	if err := os.WriteFile(filepath.Join(vm.Dir, process.CmdlineFile), []byte(process.FormatCmdline(argv, comments)), 0o640); err != nil {
		return fail(err)
	}

	console, err := process.OpenAppend(filepath.Join(vm.Dir, process.ConsoleFile))
	if err != nil {
		return fail(err)
	}
	defer console.Close()
	logf, err := process.OpenAppend(filepath.Join(vm.Dir, process.LogFile))
	if err != nil {
		return fail(err)
	}
	defer logf.Close()
	cmd := &exec.Cmd{Path: argv[0], Args: argv, Dir: vm.Dir, Stdout: console, Stderr: logf}
	c, err := p.sup.Launch(vm.UID, vm.Dir, cmd)
	if err != nil {
		return fail(err)
	}
	defer func() {
		if err != nil { // never leave a half-started VMM behind
			_ = process.AppendNote(filepath.Join(vm.Dir, process.LogFile), "start failed: "+err.Error())
			p.sup.Kill(c)
		}
	}()

	rctx, cancel := context.WithTimeout(ctx, p.opts.StartTimeout)
	defer cancel()
	api := client{sock: sock(vm.Dir)}
	if err := p.sup.WaitReady(rctx, vm.UID, vm.Dir, c, func(ctx context.Context) error {
		_, err := api.info(ctx)
		return err
	}); err != nil {
		return fail(err)
	}
	for _, r := range requests(cfg, mmds, vm.StartPaused) {
		if err := api.call(ctx, r.Method, r.Path, r.Body); err != nil {
			return fail(err)
		}
	}
	st, err := p.status(ctx, vm.UID, vm.Dir, c.Pid)
	if err != nil {
		return fail(err)
	}
	p.log.Info("vmm started", "uid", vm.UID, "pid", c.Pid, "jailed", j != nil, "state", st.State, "elapsed", time.Since(started))
	return st, nil
}

// apiTimeout bounds one API exchange with a running VMM.
const apiTimeout = 5 * time.Second

// status asks VMM pid for its instance state.
func (p *Provider) status(ctx context.Context, uid, dir string, pid int) (vmm.Status, error) {
	actx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	info, err := client{sock: sock(dir)}.info(actx)
	if err == nil {
		st := guestState(info.State)
		st.Pid = pid
		return st, nil
	}
	return p.sup.Unanswered(ctx, uid, dir, pid, "firecracker", err)
}

// guestState maps the instance state for the supervisor. Firecracker
// ends its process when the guest powers off, reboots or panics (the exit
// watch sees that), so its API knows only Not started, Running and
// Paused; any other answer means the VMM no longer runs a guest it can
// describe: failed, with the state as the reason.
func guestState(state string) vmm.Status {
	switch state {
	case stateRunning:
		return vmm.Status{State: vmm.StateRunning}
	case statePaused, stateNotStarted: // not booted yet: StartPaused
		return vmm.Status{State: vmm.StatePaused}
	}
	return vmm.Status{State: vmm.StateFailed, Reason: "firecracker reports the unknown instance state " + strconv.Quote(state)}
}

// Status implements vmm.Provider.
func (p *Provider) Status(ctx context.Context, uid, dir string) (vmm.Status, error) {
	return p.sup.Status(ctx, uid, dir, p.status)
}

// running returns the API client of VM uid's running VMM.
func (p *Provider) running(uid, dir string) (client, error) {
	if _, err := p.sup.Running(uid, dir); err != nil {
		return client{}, err
	}
	return client{sock: sock(dir)}, nil
}

// Resume implements vmm.Provider: it boots a VM started with StartPaused
// (InstanceStart) or resumes a paused one (PATCH /vm Resumed).
func (p *Provider) Resume(ctx context.Context, vm vmm.VM) error {
	api, err := p.running(vm.UID, vm.Dir)
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	info, err := api.info(actx)
	if err != nil {
		return fmt.Errorf("vm %q: resume: %w", vm.UID, err)
	}
	switch info.State {
	case stateNotStarted:
		err = api.call(actx, "PUT", "/actions", InstanceAction{ActionType: "InstanceStart"})
	case statePaused:
		err = api.call(actx, "PATCH", "/vm", VMState{State: "Resumed"})
	}
	if err != nil {
		return fmt.Errorf("vm %q: resume: %w", vm.UID, err)
	}
	return nil
}

// Pause stops the guest's vCPUs (PATCH /vm Paused); Resume runs them again.
func (p *Provider) Pause(ctx context.Context, uid, dir string) error {
	api, err := p.running(uid, dir)
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	if err := api.call(actx, "PATCH", "/vm", VMState{State: "Paused"}); err != nil {
		return fmt.Errorf("vm %q: pause: %w", uid, err)
	}
	return nil
}

// Stop implements vmm.Provider: Ctrl-Alt-Del (the guest reboots, which
// ends Firecracker, see reboot=k) and up to timeout, then SIGTERM, then
// SIGKILL. A jail is removed once Firecracker is gone.
func (p *Provider) Stop(ctx context.Context, uid, dir string, timeout time.Duration) error {
	unlock, err := p.sup.LockStop(ctx, uid, dir)
	if err != nil {
		return err
	}
	defer unlock()
	api := client{sock: sock(dir)}
	err = p.sup.Stop(ctx, uid, dir, timeout, process.StopSteps{
		Graceful: func(ctx context.Context) error {
			return api.call(ctx, "PUT", "/actions", InstanceAction{ActionType: "SendCtrlAltDel"})
		},
	})
	if err != nil {
		return err
	}
	if j := p.jailOf(uid); j != nil {
		if err := j.remove(); err != nil {
			return fmt.Errorf("vm %q: %w", uid, err)
		}
	}
	return nil
}

// Wait implements vmm.Provider.
func (p *Provider) Wait(ctx context.Context, uid, dir string) (<-chan struct{}, error) {
	return p.sup.Wait(ctx, uid, dir)
}
