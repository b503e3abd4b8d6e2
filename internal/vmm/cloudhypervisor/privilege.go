package cloudhypervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// Least privilege. Cloud Hypervisor runs as Options.User; what it needs
// is arranged by the daemon (root) before the launch:
//   - every network device is opened here and passed with vm.add-net as
//     a descriptor (TAP: /dev/net/tun attached to the persistent device;
//     macvtap: /dev/tapN), so it needs neither /dev/net/tun nor
//     CAP_NET_ADMIN;
//   - its sockets (the API socket, the guest agent's vsock socket) are
//     made by it in the VM's run/ folder, which it owns (user:<gid> 0750);
//     vsock.sock in the VM folder links to run/vsock.sock;
//   - the VM folder is root:<gid> 0750, its ancestors get o+x where the
//     user lacks it (process.User.GrantDir); kernel, initrd and read-only
//     disks are root:<gid> 0640, writable disks are owned by the user
//     (a devmapper volume's device node through its link);
//   - console.log, vmm.log and vmm.pid are the daemon's: the serial port
//     and stderr are inherited descriptors;
//   - each virtiofsd socket is given to the user (it connects to it);
//   - the process gets /dev/kvm's group as a supplementary group.

// runDir is the folder of a VM's sockets, writable by the VMM.
const runDir = "run"

// openNetFD opens the host end of a guest network device to pass to the
// VMM.
func openNetFD(n vmm.NetDevice) (*os.File, error) {
	if n.MacVTap {
		f, err := os.OpenFile(fmt.Sprintf("/dev/tap%d", n.HostIndex), os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("macvtap %q: %w", n.HostDevice, err)
		}
		return f, nil
	}
	return openTap(n.HostDevice)
}

// openTap attaches a descriptor of /dev/net/tun to the existing persistent
// TAP device name, with the flags Cloud Hypervisor itself asks for a
// single queue pair (no packet information, virtio-net headers).
func openTap(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap %q: open /dev/net/tun: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %q: attach: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// prepareRunDir makes the VM's run/ folder, owned by the VMM user, and
// the link vsock.sock -> run/vsock.sock in the VM folder.
func prepareRunDir(u process.User, dir string) error {
	run := filepath.Join(dir, runDir)
	if err := os.MkdirAll(run, 0o750); err != nil {
		return fmt.Errorf("run folder: %w", err)
	}
	if !u.IsRoot() {
		if err := os.Chown(run, int(u.UID), int(u.GID)); err != nil {
			return fmt.Errorf("run folder: %w", err)
		}
	}
	if err := os.Chmod(run, 0o750); err != nil {
		return fmt.Errorf("run folder: %w", err)
	}
	link := filepath.Join(dir, vmm.GuestAgentSocket)
	if target, err := os.Readlink(link); err == nil && target == filepath.Join(runDir, vmm.GuestAgentSocket) {
		return nil
	}
	if err := process.RemoveStale(link); err != nil {
		return err
	}
	if err := os.Symlink(filepath.Join(runDir, vmm.GuestAgentSocket), link); err != nil {
		return fmt.Errorf("guest agent socket link: %w", err)
	}
	return nil
}

// grant gives the VMM user access to what Cloud Hypervisor opens by path.
// Files outside the VM folder are the operator's to arrange: they are
// never re-owned here.
func grant(u process.User, vm vmm.VM) error {
	if u.IsRoot() {
		return nil
	}
	if err := u.GrantDir(vm.Dir); err != nil {
		return err
	}
	read := []string{vm.KernelPath}
	if vm.InitrdPath != "" {
		read = append(read, vm.InitrdPath)
	}
	var write []string
	for _, d := range vm.Disks {
		if d.ReadOnly {
			read = append(read, d.Path)
		} else {
			write = append(write, d.Path)
		}
	}
	for _, f := range read {
		if err := inside(vm.Dir, f, u.GrantRead); err != nil {
			return err
		}
	}
	for _, f := range write {
		if err := inside(vm.Dir, f, u.GrantWrite); err != nil {
			return err
		}
	}
	return nil
}

func inside(dir, path string, fn func(string) error) error {
	rel, err := filepath.Rel(dir, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil
	}
	return fn(path)
}

// credential is the VMM process's identity: the VMM user with /dev/kvm's
// group; nil for root.
func credential(u process.User) *syscall.SysProcAttr {
	if u.IsRoot() {
		return nil
	}
	var groups []uint32
	if st, err := os.Stat("/dev/kvm"); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Gid != 0 {
			groups = append(groups, sys.Gid)
		}
	}
	return &syscall.SysProcAttr{Credential: u.Credential(groups...)}
}
