// Package cloudhypervisor is the Cloud Hypervisor provider: it runs each
// microVM as a `cloud-hypervisor --api-socket` process detached from
// flintlockd and drives it through its REST API: PUT vm.create with the
// whole VM configuration (payload: kernel, command line, initramfs; cpus,
// memory, disks, net, fs, vsock, serial, console), vm.add-net for macvtap
// devices (their descriptors passed with the request, SCM_RIGHTS), vm.boot,
// then vm.info for the state, vm.pause/vm.resume, vm.counters, and
// vm.power-button, vm.shutdown, vm.delete and vmm.shutdown to stop.
//
// Files in the VM folder: vmm.cmdline, vmm.pid (written by the provider),
// run/ch-<uid>.sock (the API socket, in the run/ folder the VMM may
// write; its name carries the uid marker by which the provider finds the
// process again after a restart, as Cloud Hypervisor has no flag for a
// name), console.log (the serial port, which
// is the VMM's stdout: "Tty" mode, since "File" mode truncates the file at
// every start), vmm.log (the VMM's stderr, virtiofsd's output and the
// provider's notes), vmm.config.json (the vm.create document and the
// devices added), vsock.sock (a link to run/vsock.sock) with a guest
// agent, and
// virtiofs-<uid>-<n>.sock per shared folder.
//
// Shared folders (virtio-fs) are each served by a virtiofsd the provider
// starts before the VMM (the Rust daemon or QEMU's); it ends with the VMM's
// connection. Guest memory is then shared, as vhost-user needs.
//
// With Options.User the VMM runs unprivileged (privilege.go): network
// devices are passed as descriptors and files are granted one by one.
//
// A guest reboot restarts the guest inside the same process (Cloud
// Hypervisor has no "exit on reboot"), so a guest that panics with panic=N
// reboots rather than ending the VMM; its panic line is on the console.
// A guest power-off ends the process.
//
// The guest boots an uncompressed ELF kernel (boot/vmlinux in the kernel
// images; direct boot of a bzImage is refused).
package cloudhypervisor

import (
	"context"
	"encoding/json"
	"errors"
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
const Name = "cloudhypervisor"

// Options configure the provider. The zero value runs `cloud-hypervisor`
// from PATH.
type Options struct {
	// Binary is the cloud-hypervisor executable (default
	// "cloud-hypervisor", looked up in PATH).
	Binary string
	// Virtiofsd serves shared folders (virtio-fs). Default: "virtiofsd" in
	// PATH, /usr/libexec/virtiofsd or /usr/lib/qemu/virtiofsd; without
	// one the provider has no virtio-fs.
	Virtiofsd string
	// StartTimeout bounds how long Start waits for the API socket and the
	// virtiofsd sockets (default 10s).
	StartTimeout time.Duration
	// ExtraArgs are appended to Cloud Hypervisor's command line.
	ExtraArgs []string
	// User is who Cloud Hypervisor runs as (privilege.go); the zero value
	// keeps the daemon's identity (root). Unprivileged, every network
	// device is passed as a descriptor.
	User process.User
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Provider runs microVMs with Cloud Hypervisor. It is safe for concurrent
// use.
type Provider struct {
	opts      Options
	binary    string
	virtiofsd string // "" when none was found
	fsd       *process.Virtiofsd
	log       *slog.Logger
	sup       *process.Supervisor
}

var _ vmm.Provider = (*Provider)(nil)

// New returns a provider; it fails when the binary is not found, or a
// virtiofsd given in Options is not.
func New(opts Options) (*Provider, error) {
	if opts.Binary == "" {
		opts.Binary = "cloud-hypervisor"
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	bin, err := process.LookPath(opts.Binary)
	if err != nil {
		return nil, fmt.Errorf("cloud-hypervisor binary: %w", err)
	}
	p := &Provider{opts: opts, binary: bin, log: opts.Logger.With("provider", Name)}
	if p.virtiofsd, err = process.LookupVirtiofsd(opts.Virtiofsd); err != nil {
		return nil, err
	}
	p.sup = process.NewSupervisor(process.SupervisorOptions{UIDOf: p.argvUID, Logger: p.log})
	p.fsd = &process.Virtiofsd{Binary: p.virtiofsd, StartTimeout: opts.StartTimeout, Logger: p.log}
	return p, nil
}

// Name implements vmm.Provider.
func (p *Provider) Name() string { return Name }

// Capabilities implements vmm.Provider.
func (p *Provider) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{NoCloudDisk: true, VirtioFS: p.virtiofsd != "", MacVTap: true, GuestAgent: true, UncompressedKernel: true}
}

// apiSocketName is the VM's API socket, in the run/ folder of the VM's
// folder (which the VMM may write: it creates the socket).
func apiSocketName(uid string) string { return filepath.Join(runDir, "ch-"+uid+".sock") }

// sock is the host path of a VM's API socket.
func sock(uid, dir string) string { return filepath.Join(dir, apiSocketName(uid)) }

// vsockName is the guest agent's socket as Cloud Hypervisor makes it;
// vmm.GuestAgentSocket in the VM folder links to it.
var vsockName = filepath.Join(runDir, vmm.GuestAgentSocket)

// buildArgs is the VMM's command line; apiSock is the socket as given to
// it (see process.SocketArg).
func (p *Provider) buildArgs(apiSock string) []string {
	return append([]string{p.binary, "--api-socket", "path=" + apiSock}, p.opts.ExtraArgs...)
}

// argvUID returns the VM uid carried by a Cloud Hypervisor argument
// vector started by the provider (the API socket's name), or "".
func (p *Provider) argvUID(argv []string) string {
	if len(argv) == 0 {
		return ""
	}
	exe := filepath.Base(argv[0])
	if !strings.Contains(exe, "cloud-hypervisor") && exe != filepath.Base(p.binary) {
		return ""
	}
	for i := 1; i+1 < len(argv); i++ {
		if argv[i] != "--api-socket" {
			continue
		}
		for opt := range strings.SplitSeq(argv[i+1], ",") {
			if path, ok := strings.CutPrefix(opt, "path="); ok {
				name := filepath.Base(path)
				if uid, ok := strings.CutPrefix(name, "ch-"); ok {
					return strings.TrimSuffix(uid, ".sock")
				}
			}
		}
	}
	return ""
}

var uidPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func (p *Provider) validate(vm vmm.VM) error {
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
	case len(vm.SharedDirs) > 0 && p.virtiofsd == "":
		return fmt.Errorf("vm %q: shared folders need virtiofsd, which is not installed: %w", vm.UID, errdefs.ErrFailedPrecondition)
	}
	elf, err := process.IsELF(vm.KernelPath)
	if err != nil {
		return fmt.Errorf("vm %q: kernel: %w", vm.UID, err)
	}
	if !elf {
		return bad("kernel %s is not an uncompressed ELF vmlinux (cloud-hypervisor boots a bzImage only through firmware)", vm.KernelPath)
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
	tags := map[string]bool{}
	for i, sd := range vm.SharedDirs {
		// virtiofsd takes the folder in a comma-separated option list.
		if sd.Tag == "" || tags[sd.Tag] || !filepath.IsAbs(sd.HostPath) || strings.Contains(sd.HostPath, ",") {
			return bad("shared folder %d: tag %q, path %q", i, sd.Tag, sd.HostPath)
		}
		tags[sd.Tag] = true
	}
	return nil
}

// Start implements vmm.Provider. It returns once the VM is created and,
// unless StartPaused, booted.
func (p *Provider) Start(ctx context.Context, vm vmm.VM) (_ vmm.Status, err error) {
	if err := p.validate(vm); err != nil {
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

	for _, name := range []string{process.ConsoleFile, process.LogFile} {
		if err := process.AppendNote(filepath.Join(vm.Dir, name), process.StartNote); err != nil {
			return fail(err)
		}
	}
	if err := prepareRunDir(p.opts.User, vm.Dir); err != nil {
		return fail(err)
	}
	for _, name := range []string{apiSocketName(vm.UID), vsockName} {
		if err := process.RemoveStale(filepath.Join(vm.Dir, name)); err != nil {
			return fail(err)
		}
	}
	// What Cloud Hypervisor opens by path.
	if err := p.opts.User.GrantVM(vm); err != nil {
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

	// The descriptors of the network devices passed with vm.add-net
	// (macvtaps; every device for an unprivileged VMM), opened before
	// anything starts, by index in vm.Nets.
	byFD := !p.opts.User.IsRoot()
	netFiles := make([]*os.File, len(vm.Nets))
	defer func() {
		for _, f := range netFiles {
			if f != nil {
				f.Close()
			}
		}
	}()
	for i, n := range vm.Nets {
		if !n.MacVTap && !byFD {
			continue
		}
		if netFiles[i], _, err = process.OpenNet(n, true); err != nil {
			return fail(err)
		}
	}

	defer func() {
		if err != nil {
			_ = process.AppendNote(filepath.Join(vm.Dir, process.LogFile), "start failed: "+err.Error())
			p.stopVirtiofsd(vm.UID)
		}
	}()
	fsSockets, err := p.startVirtiofsd(ctx, vm, logf)
	if err != nil {
		return fail(err)
	}
	pl := buildPlan(vm, fsSockets, process.SocketArg(vm.Dir, vsockName), byFD)
	doc, err := json.MarshalIndent(map[string]any{"vm.create": pl.config, "vm.add-net": pl.addNet}, "", "  ")
	if err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(vm.Dir, process.ConfigFile), append(doc, '\n'), 0o640); err != nil {
		return fail(err)
	}
	argv := p.buildArgs(process.SocketArg(vm.Dir, apiSocketName(vm.UID)))
	if err := os.WriteFile(filepath.Join(vm.Dir, process.CmdlineFile), []byte(process.FormatCmdline(argv, []string{"api socket " + sock(vm.UID, vm.Dir)})), 0o640); err != nil {
		return fail(err)
	}
	cmd := &exec.Cmd{Path: p.binary, Args: argv, Dir: vm.Dir, Stdout: console, Stderr: logf, SysProcAttr: p.opts.User.SysProcAttr(true)}
	c, err := p.sup.Launch(vm.UID, vm.Dir, cmd)
	if err != nil {
		return fail(err)
	}
	defer func() {
		if err != nil { // never leave a half-started VMM behind
			p.sup.Kill(c)
		}
	}()

	api := client{sock: sock(vm.UID, vm.Dir)}
	rctx, cancel := context.WithTimeout(ctx, p.opts.StartTimeout)
	defer cancel()
	if err := p.sup.WaitReady(rctx, vm.UID, vm.Dir, c, func(ctx context.Context) error {
		var ping map[string]any
		return api.get(ctx, "vmm.ping", &ping)
	}); err != nil {
		return fail(err)
	}
	if err := api.call(ctx, "vm.create", pl.config, nil); err != nil {
		return fail(err)
	}
	for k, nc := range pl.addNet {
		var files []*os.File
		if f := netFiles[pl.netOf[k]]; f != nil {
			files = []*os.File{f}
		}
		if err := api.call(ctx, "vm.add-net", nc, files); err != nil {
			return fail(err)
		}
	}
	if !vm.StartPaused {
		if err := api.call(ctx, "vm.boot", nil, nil); err != nil {
			return fail(err)
		}
	}
	st, err := p.status(ctx, vm.UID, vm.Dir, c.Pid)
	if err != nil {
		return fail(err)
	}
	p.log.Info("vmm started", "uid", vm.UID, "pid", c.Pid, "user", p.opts.User.Name, "state", st.State, "elapsed", time.Since(started))
	return st, nil
}

// apiTimeout bounds one API exchange with a running VMM.
const apiTimeout = 5 * time.Second

// status asks VMM pid for the VM's state (see guestState).
func (p *Provider) status(ctx context.Context, uid, dir string, pid int) (vmm.Status, error) {
	actx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	info, err := client{sock: sock(uid, dir)}.info(actx)
	var apiErr *process.APIError
	switch {
	case err == nil:
		st := guestState(info.State)
		st.Pid = pid
		return st, nil
	case errors.As(err, &apiErr) && apiErr.Status == 404:
		// The VMM answers but holds no VM (vm.delete): no guest runs.
		return vmm.Status{State: vmm.StateFailed, Pid: pid, Reason: "cloud-hypervisor runs without a VM: " + apiErr.Message}, nil
	}
	return p.sup.Unanswered(ctx, uid, dir, pid, "cloud-hypervisor", err)
}

// guestState maps vm.info's state for the supervisor. A guest power-off
// ends the process (seen by the exit watch), so a live VMM whose VM is
// Shutdown had it shut down behind flintlockd's back: the guest is dead
// behind a live VMM (StateFailed: the reconciler stops the VMM and
// applies the restart policy). BreakPoint is a debugger's stop (gdb
// stub): the guest is paused, not dead. States this provider does not
// know are treated as failed too, with the state as the reason.
func guestState(state string) vmm.Status {
	switch state {
	case stateRunning:
		return vmm.Status{State: vmm.StateRunning}
	case statePaused, stateCreated: // Created: not booted yet (StartPaused)
		return vmm.Status{State: vmm.StatePaused}
	case stateBreakPoint:
		return vmm.Status{State: vmm.StatePaused, Reason: "stopped at a debugger breakpoint"}
	case stateShutdown:
		return vmm.Status{State: vmm.StateFailed, Reason: "cloud-hypervisor reports the VM shut down while the VMM runs"}
	}
	return vmm.Status{State: vmm.StateFailed, Reason: "cloud-hypervisor reports the unknown VM state " + strconv.Quote(state)}
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
	return client{sock: sock(uid, dir)}, nil
}

// Resume implements vmm.Provider: it boots a VM created with StartPaused
// (vm.boot) or resumes a paused one (vm.resume).
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
	case stateCreated:
		err = api.call(actx, "vm.boot", nil, nil)
	case statePaused:
		err = api.call(actx, "vm.resume", nil, nil)
	}
	if err != nil {
		return fmt.Errorf("vm %q: resume: %w", vm.UID, err)
	}
	return nil
}

// Pause stops the guest (vm.pause); Resume runs it again.
func (p *Provider) Pause(ctx context.Context, uid, dir string) error {
	api, err := p.running(uid, dir)
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	if err := api.call(actx, "vm.pause", nil, nil); err != nil {
		return fmt.Errorf("vm %q: pause: %w", uid, err)
	}
	return nil
}

// Counters returns the VM's device counters (vm.counters): per device id,
// counter name to value.
func (p *Provider) Counters(ctx context.Context, uid, dir string) (map[string]map[string]uint64, error) {
	api, err := p.running(uid, dir)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	var counters map[string]map[string]uint64
	if err := api.get(actx, "vm.counters", &counters); err != nil {
		return nil, fmt.Errorf("vm %q: counters: %w", uid, err)
	}
	return counters, nil
}

// Stop implements vmm.Provider: the ACPI power button (vm.power-button)
// and up to timeout for the guest to power off, which ends the VMM; then
// vm.shutdown, vm.delete (releasing devices, so virtiofsd ends too) and
// vmm.shutdown; then SIGKILL. Remaining virtiofsd daemons are ended.
func (p *Provider) Stop(ctx context.Context, uid, dir string, timeout time.Duration) error {
	unlock, err := p.sup.LockStop(ctx, uid, dir)
	if err != nil {
		return err
	}
	defer unlock()
	api := client{sock: sock(uid, dir)}
	err = p.sup.Stop(ctx, uid, dir, timeout, process.StopSteps{
		Graceful: func(ctx context.Context) error { return api.call(ctx, "vm.power-button", nil, nil) },
		Quit: func(ctx context.Context) error {
			// The first two fail on a VM that never booted: not a reason
			// to stop trying.
			_ = api.call(ctx, "vm.shutdown", nil, nil)
			_ = api.call(ctx, "vm.delete", nil, nil)
			return api.call(ctx, "vmm.shutdown", nil, nil)
		},
	})
	p.stopVirtiofsd(uid)
	return err
}

// Wait implements vmm.Provider.
func (p *Provider) Wait(ctx context.Context, uid, dir string) (<-chan struct{}, error) {
	return p.sup.Wait(ctx, uid, dir)
}
