package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/spf13/pflag"

	"github.com/liquidmetal-go/liquidmetal/internal/mds"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/cloudhypervisor"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/firecracker"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/qemu"
)

// vmmOptions are the settings of the VMM providers (besides QEMU's, in
// options) and of the metadata service.
type vmmOptions struct {
	firecrackerBinary     string
	firecrackerLogLevel   string
	jailer                string
	jailerUID, jailerGID  int
	chrootBase            string
	cgroupVersion         int
	parentCgroup          string
	cloudHypervisorBinary string
	virtiofsdBinary       string
	// vmmUser is who QEMU and Cloud Hypervisor run as (vmmuser.go).
	vmmUser string

	metadataService      string
	metadataRequireToken bool

	// crashAfterStep kills flintlockd (SIGKILL) right after the first
	// create step of that name that acts: crash tests only.
	crashAfterStep string

	// changed reports whether a flag was set (command line, environment
	// or config file); set before run.
	changed func(name string) bool
}

func addVMMFlags(f *pflag.FlagSet, o *vmmOptions) {
	f.StringVar(&o.firecrackerBinary, "firecracker-binary", "firecracker", "Firecracker binary; the firecracker provider is registered when it is found")
	f.StringVar(&o.firecrackerLogLevel, "firecracker-log-level", "Info", "Firecracker's log level: Error, Warning, Info, Debug or Trace")
	f.StringVar(&o.jailer, "firecracker-jailer", "", "run Firecracker through this jailer binary (off when empty)")
	f.IntVar(&o.jailerUID, "firecracker-jailer-uid", 0, "uid the jailer runs Firecracker as (not 0)")
	f.IntVar(&o.jailerGID, "firecracker-jailer-gid", 0, "gid the jailer runs Firecracker as (not 0)")
	f.StringVar(&o.chrootBase, "firecracker-chroot-base", "/srv/jailer", "the jailer's chroot base folder (on the file system of --state-dir)")
	f.IntVar(&o.cgroupVersion, "firecracker-cgroup-version", 2, "cgroup version the jailer uses: 1 or 2")
	f.StringVar(&o.parentCgroup, "firecracker-parent-cgroup", "", "the jailer's parent cgroup (default: the jailer's own)")
	f.StringVar(&o.cloudHypervisorBinary, "cloud-hypervisor-binary", "cloud-hypervisor", "Cloud Hypervisor binary; the cloudhypervisor provider is registered when it is found")
	f.StringVar(&o.virtiofsdBinary, "virtiofsd-binary", "", "virtiofsd for shared folders (QEMU and Cloud Hypervisor) (default: searched in PATH, /usr/libexec, /usr/lib/qemu)")
	f.StringVar(&o.vmmUser, "vmm-user", "", `user QEMU and Cloud Hypervisor run as: name, name:group, uid or uid:gid; "root" keeps the daemon's identity (default: the `+process.DefaultVMMUser+` system user if the host has it, else root with a warning)`)
	f.StringVar(&o.metadataService, "metadata-service", "off", `address at which VMs with TAP interfaces reach their metadata (e.g. 169.254.169.254:80), or "off"`)
	f.BoolVar(&o.metadataRequireToken, "metadata-require-token", false, "metadata service: refuse requests without a session token (IMDSv2 / MMDS V2 only)")
	f.StringVar(&o.crashAfterStep, "crash-after-step", "", "testing: SIGKILL flintlockd right after the named create step acts")
	_ = f.MarkHidden("crash-after-step")
}

// newProviders creates the VMM providers whose binaries are found and logs
// which. A provider whose binary flag was set explicitly must be found;
// the default provider must be among those registered.
func newProviders(o *options, log *slog.Logger) (map[string]vmm.Provider, error) {
	v := &o.vmm
	changed := v.changed
	if changed == nil {
		changed = func(string) bool { return false }
	}
	providers := map[string]vmm.Provider{}
	// add registers p, or skips it when its binary is not installed and
	// nobody asked for it; other errors (bad settings) are returned.
	add := func(name string, p vmm.Provider, err error, flags ...string) error {
		if err == nil {
			providers[name] = p
			return nil
		}
		asked := o.defaultProvider == name || slices.ContainsFunc(flags, changed)
		if isNotInstalled(err) && !asked {
			log.Info("VMM provider not registered: binary not found", "provider", name, "flag", "--"+flags[0], "err", err)
			return nil
		}
		return fmt.Errorf("provider %s (--%s): %w", name, flags[0], err)
	}

	vmmUser, err := resolveVMMUser(v.vmmUser, log)
	if err != nil {
		return nil, err
	}
	q, err := qemu.New(qemu.Options{Binary: o.qemuBinary, Accel: o.qemuAccel, Virtiofsd: v.virtiofsdBinary, User: vmmUser, Logger: log})
	if err := add(qemu.Name, q, err, "qemu-binary"); err != nil {
		return nil, err
	}

	fo := firecracker.Options{Binary: v.firecrackerBinary, LogLevel: v.firecrackerLogLevel, Logger: log}
	if v.jailer != "" {
		fo.Jailer = &firecracker.Jailer{
			Binary: v.jailer, UID: v.jailerUID, GID: v.jailerGID,
			ChrootBase: v.chrootBase, CgroupVersion: v.cgroupVersion, ParentCgroup: v.parentCgroup,
		}
	}
	fc, err := firecracker.New(fo)
	if err := add(firecracker.Name, fc, err, "firecracker-binary", "firecracker-jailer"); err != nil {
		return nil, err
	}

	ch, err := cloudhypervisor.New(cloudhypervisor.Options{Binary: v.cloudHypervisorBinary, Virtiofsd: v.virtiofsdBinary, User: vmmUser, Logger: log})
	if err := add(cloudhypervisor.Name, ch, err, "cloud-hypervisor-binary", "virtiofsd-binary"); err != nil {
		return nil, err
	}

	if _, ok := providers[o.defaultProvider]; !ok {
		return nil, fmt.Errorf("--default-provider: %q is not a provider of this build (qemu, firecracker, cloudhypervisor): %w", o.defaultProvider, errdefs.ErrInvalidArgument)
	}
	for _, name := range sortedNames(providers) {
		caps := providers[name].Capabilities()
		log.Info("VMM provider registered", "provider", name, "default", name == o.defaultProvider,
			"virtiofs", caps.VirtioFS, "macvtap", caps.MacVTap, "guest-agent", caps.GuestAgent)
	}
	return providers, nil
}

// isNotInstalled reports whether a provider's error is its binary missing.
func isNotInstalled(err error) bool {
	return errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist)
}

func sortedNames(providers map[string]vmm.Provider) []string {
	names := make([]string, 0, len(providers))
	for n := range providers {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// metadataAddress parses --metadata-service: an address, or off.
func metadataAddress(s string) (netip.AddrPort, bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "off", "false", "no":
		return netip.AddrPort{}, false, nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		if a, aerr := netip.ParseAddr(s); aerr == nil {
			ap, err = netip.AddrPortFrom(a, mds.Port), nil
		}
	}
	if err != nil || !ap.Addr().Is4() || ap.Port() == 0 {
		return netip.AddrPort{}, false, fmt.Errorf("--metadata-service %q: want an IPv4 address with a port (e.g. %s) or off: %w", s, mds.DefaultAddress, errdefs.ErrInvalidArgument)
	}
	return ap, true, nil
}

// newMetadataService starts the metadata service when it is on; nil when
// it is off.
func newMetadataService(o *options, log *slog.Logger) (*mds.Server, error) {
	addr, on, err := metadataAddress(o.vmm.metadataService)
	if err != nil || !on {
		return nil, err
	}
	s, err := mds.New(mds.Options{Address: addr, RequireToken: o.vmm.metadataRequireToken, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("--metadata-service: %w", err)
	}
	log.Info("metadata service started", "address", addr.String(), "require-token", o.vmm.metadataRequireToken)
	return s, nil
}

// crashHook is the reconciler's AfterStep for --crash-after-step: the
// daemon dies at once, without any clean-up, as in a crash.
func crashHook(step string, log *slog.Logger) func(uid, step string) {
	if step == "" {
		return nil
	}
	return func(uid, s string) {
		if s != step {
			return
		}
		log.Warn("--crash-after-step: killing flintlockd", "uid", uid, "step", s)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // never returns
	}
}
