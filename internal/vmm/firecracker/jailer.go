package firecracker

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

// Jailer runs Firecracker through its jailer: the jailer creates a chroot
// (<ChrootBase>/<firecracker binary name>/<uid>/root), device nodes for
// /dev/kvm and /dev/net/tun in it, a cgroup, optionally enters a network
// namespace, drops to UID/GID and execs Firecracker, which then sees only
// the chroot. The provider hard-links the VM's files into the chroot first.
//
// The jailer is run in the foreground (no --daemonize, no --new-pid-ns):
// it execs Firecracker in the same process, so the pid flintlockd starts is
// the VMM's, which it reaps and waits on like an unjailed one, and the
// serial console still reaches console.log through stdout.
type Jailer struct {
	// Binary is the jailer (default "jailer", looked up in PATH).
	Binary string
	// UID and GID Firecracker runs as; they must not be 0.
	UID, GID int
	// ChrootBase is the jailer's --chroot-base-dir (default /srv/jailer).
	// It must be on the file system of the VM folders: writable files
	// (volumes, logs) are hard-linked, never copied.
	ChrootBase string
	// CgroupVersion is 1 or 2 (default 2).
	CgroupVersion int
	// ParentCgroup is the jailer's --parent-cgroup (default: the jailer's
	// own, the Firecracker binary's name).
	ParentCgroup string
	// Cgroups are --cgroup values, "<file>=<value>" (e.g. "cpu.weight=50").
	Cgroups []string
	// NetNS is a network namespace path (--netns) Firecracker joins.
	NetNS string
	// ResourceLimits are --resource-limit values ("no-file=1024").
	ResourceLimits []string
}

// Paths inside the chroot.
const (
	jailAPISocket = "/run/firecracker.socket"
	jailVsock     = "/run/" + vmm.GuestAgentSocket
	jailLog       = "/" + logName
	jailMetrics   = "/" + metricsName
	jailKernel    = "/vmlinux"
	jailInitrd    = "/initrd"
)

// jail is the chroot of one VM.
type jail struct {
	cfg     Jailer
	binary  string // the jailer
	execDir string // <ChrootBase>/<exec file name>/<uid>
	root    string // execDir/root
	cgroup  string // the VM's cgroup v2 folder
}

func newJail(cfg Jailer, jailerBin, fcBin, uid string) *jail {
	execDir := filepath.Join(cfg.ChrootBase, filepath.Base(fcBin), uid)
	parent := cfg.ParentCgroup
	if parent == "" {
		parent = filepath.Base(fcBin)
	}
	return &jail{
		cfg:     cfg,
		binary:  jailerBin,
		execDir: execDir,
		root:    filepath.Join(execDir, "root"),
		cgroup:  filepath.Join("/sys/fs/cgroup", parent, uid),
	}
}

// host returns the host path of a path inside the chroot.
func (j *jail) host(p string) string { return filepath.Join(j.root, p) }

// args is the jailer's argument vector; fcArgs are passed to Firecracker
// after "--". The jailer gives Firecracker --id itself.
func (j *jail) args(fcBin, uid string, fcArgs []string) []string {
	a := []string{
		j.binary,
		"--id", uid,
		"--exec-file", fcBin,
		"--uid", strconv.Itoa(j.cfg.UID),
		"--gid", strconv.Itoa(j.cfg.GID),
		"--chroot-base-dir", j.cfg.ChrootBase,
		"--cgroup-version", strconv.Itoa(j.cfg.CgroupVersion),
	}
	if j.cfg.ParentCgroup != "" {
		a = append(a, "--parent-cgroup", j.cfg.ParentCgroup)
	}
	for _, c := range j.cfg.Cgroups {
		a = append(a, "--cgroup", c)
	}
	if j.cfg.NetNS != "" {
		a = append(a, "--netns", j.cfg.NetNS)
	}
	for _, r := range j.cfg.ResourceLimits {
		a = append(a, "--resource-limit", r)
	}
	a = append(a, "--")
	return append(a, fcArgs...)
}

// prepare lays out a fresh chroot: the VM's kernel, initrd and disks and
// its log and metrics files are hard-linked in (read-only inputs are
// copied when the chroot is on another file system) and handed to the
// jail's user, with /run for the sockets Firecracker creates. It returns
// the paths Firecracker sees.
func (j *jail) prepare(vm vmm.VM) (paths, error) {
	if err := j.remove(); err != nil {
		return paths{}, err
	}
	// The chroot's root is searchable by the jail's user; /run is its own.
	if err := os.MkdirAll(j.root, 0o755); err != nil {
		return paths{}, fmt.Errorf("jail: %w", err)
	}
	if err := os.Mkdir(j.host("/run"), 0o750); err != nil {
		return paths{}, fmt.Errorf("jail: %w", err)
	}
	if err := os.Chown(j.host("/run"), j.cfg.UID, j.cfg.GID); err != nil {
		return paths{}, fmt.Errorf("jail: %w", err)
	}
	p := paths{kernel: jailKernel, log: jailLog, metrics: jailMetrics, vsock: jailVsock}
	put := func(src, dst string, writable bool) error {
		if err := j.link(src, j.host(dst), writable); err != nil {
			return fmt.Errorf("jail: %s: %w", filepath.Base(src), err)
		}
		return nil
	}
	if err := put(vm.KernelPath, jailKernel, false); err != nil {
		return paths{}, err
	}
	if vm.InitrdPath != "" {
		p.initrd = jailInitrd
		if err := put(vm.InitrdPath, jailInitrd, false); err != nil {
			return paths{}, err
		}
	}
	for i, d := range vm.Disks {
		dst := fmt.Sprintf("/drive%d.img", i)
		if err := put(d.Path, dst, !d.ReadOnly); err != nil {
			return paths{}, err
		}
		p.drives = append(p.drives, dst)
	}
	for _, f := range [][2]string{{logName, jailLog}, {metricsName, jailMetrics}} {
		if err := put(filepath.Join(vm.Dir, f[0]), f[1], true); err != nil {
			return paths{}, err
		}
	}
	return p, nil
}

// link makes dst the file src (a hard link), owned by the jail's user. A
// read-only input on another file system is copied instead; a writable
// one cannot be, since the guest's writes would go to the copy.
func (j *jail) link(src, dst string, writable bool) error {
	err := os.Link(src, dst)
	if errors.Is(err, syscall.EXDEV) {
		if writable {
			return fmt.Errorf("chroot base %s is on another file system than %s: %w", j.cfg.ChrootBase, src, errdefs.ErrFailedPrecondition)
		}
		err = copyFile(src, dst)
	}
	if err != nil {
		return err
	}
	return os.Chown(dst, j.cfg.UID, j.cfg.GID)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o440)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// remove deletes the chroot (hard links, device nodes, sockets: the VM
// folder keeps the originals) and the VM's cgroup, once Firecracker has
// exited.
func (j *jail) remove() error {
	if err := os.RemoveAll(j.execDir); err != nil {
		return fmt.Errorf("jail: remove %s: %w", j.execDir, err)
	}
	if j.cfg.CgroupVersion == 2 {
		if err := syscall.Rmdir(j.cgroup); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("jail: remove cgroup %s: %w", j.cgroup, err)
		}
	}
	return nil
}
