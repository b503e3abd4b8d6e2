package cloudhypervisor

import (
	"fmt"
	"os"
	"path/filepath"

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
