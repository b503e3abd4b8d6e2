package qemu

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// Least privilege. QEMU runs as Options.User; what it needs is arranged by
// the daemon (root) before the launch:
//   - every network device is opened here and inherited as a descriptor
//     (TAP: /dev/net/tun attached to the persistent device; macvtap:
//     /dev/tapN), so QEMU needs neither /dev/net/tun nor CAP_NET_ADMIN;
//   - the QMP socket is inherited too, and vmm.log is its stdout/stderr;
//   - the VM folder is root:<gid> 0750 (QEMU creates nothing there), its
//     ancestors get o+x (search, no listing) where the user lacks it;
//     kernel, initrd, the cidata disk and read-only volumes are root:<gid>
//     0640, writable volumes, console.log and vmm.pid are owned by the
//     user; the backing files of qcow2 volumes (shared base images) are
//     root:<gid> 0640 and reachable (o+x on their folders);
//   - under KVM the process gets /dev/kvm's group as a supplementary group.

// grant gives the VMM user access to what the VM's QEMU opens by path:
// besides the VM's files, console.log and vmm.pid (QEMU writes them) and
// the backing files of qcow2 volumes (a shared base image, read only),
// read wherever they are.
func grant(u process.User, vm vmm.VM) error {
	if u.IsRoot() {
		return nil
	}
	if err := u.GrantVM(vm, filepath.Join(vm.Dir, process.ConsoleFile), filepath.Join(vm.Dir, process.PidFile)); err != nil {
		return err
	}
	for _, d := range vm.Disks {
		chain, err := backingFiles(d.Path)
		if err != nil {
			return err
		}
		for _, f := range chain {
			if err := u.GrantSearch(filepath.Dir(f)); err != nil {
				return err
			}
			if err := u.GrantRead(f); err != nil {
				return err
			}
		}
	}
	return nil
}

// backingFiles returns the backing chain of a qcow2 image (nearest
// first): the files QEMU opens besides the image itself. Other formats
// have none.
func backingFiles(path string) ([]string, error) {
	var chain []string
	for range 16 { // deeper chains are not ours
		next, err := qcow2Backing(path)
		if err != nil || next == "" {
			return chain, err
		}
		if !filepath.IsAbs(next) {
			next = filepath.Join(filepath.Dir(path), next)
		}
		chain = append(chain, next)
		path = next
	}
	return chain, nil
}

// qcow2Backing reads the backing file name from a qcow2 header ("" for
// none, or for a file that is not qcow2).
func qcow2Backing(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("disk %s: %w", path, err)
	}
	defer f.Close()
	hdr := make([]byte, 20)
	if _, err := io.ReadFull(f, hdr); err != nil || string(hdr[:4]) != "QFI\xfb" {
		return "", nil
	}
	off, size := binary.BigEndian.Uint64(hdr[8:16]), binary.BigEndian.Uint32(hdr[16:20])
	if off == 0 || size == 0 || size > 1023 {
		return "", nil
	}
	name := make([]byte, size)
	if _, err := f.ReadAt(name, int64(off)); err != nil {
		return "", fmt.Errorf("disk %s: backing file name: %w", path, err)
	}
	return string(name), nil
}
