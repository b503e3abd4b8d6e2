package qemu

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

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

// openNet opens the host end of a guest network device for QEMU to
// inherit, and describes it for vmm.cmdline.
func openNet(n vmm.NetDevice) (*os.File, string, error) {
	if n.MacVTap {
		dev := fmt.Sprintf("/dev/tap%d", n.HostIndex)
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return nil, "", fmt.Errorf("macvtap %q: %w", n.HostDevice, err)
		}
		return f, fmt.Sprintf("%s (macvtap %s)", dev, n.HostDevice), nil
	}
	f, err := openTap(n.HostDevice)
	if err != nil {
		return nil, "", err
	}
	return f, fmt.Sprintf("/dev/net/tun attached to tap %s", n.HostDevice), nil
}

// openTap attaches a descriptor of /dev/net/tun to the existing persistent
// TAP device name, with the flags QEMU itself would ask for (no packet
// information, virtio-net headers).
func openTap(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
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

// grant gives the VMM user access to what the VM's QEMU opens by path.
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
	write := []string{filepath.Join(vm.Dir, process.ConsoleFile), filepath.Join(vm.Dir, process.PidFile)}
	for _, d := range vm.Disks {
		if d.ReadOnly {
			read = append(read, d.Path)
		} else {
			write = append(write, d.Path)
		}
	}
	// Files outside the VM folder are the operator's to arrange: they are
	// never re-owned here.
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
	// A qcow2 volume's backing files (a shared base image, read only)
	// are read wherever they are.
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

func inside(dir, path string, fn func(string) error) error {
	rel, err := filepath.Rel(dir, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil
	}
	return fn(path)
}

// credential is the QEMU process's identity: the VMM user, plus /dev/kvm's
// group under KVM.
func credential(u process.User, accel string) *syscall.SysProcAttr {
	if u.IsRoot() {
		return nil
	}
	var groups []uint32
	if accel == AccelKVM {
		if st, err := os.Stat("/dev/kvm"); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Gid != 0 {
				groups = append(groups, sys.Gid)
			}
		}
	}
	return &syscall.SysProcAttr{Credential: u.Credential(groups...)}
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
