package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// Shared folders (virtio-fs). Each vm.SharedDirs entry is served by a
// virtiofsd (process.Virtiofsd: root, sandboxed, detached, its socket
// virtiofs-<uid>-<n>.sock in the VM folder) started before QEMU, which
// connects to it as a vhost-user-fs-device. vhost-user needs the guest's
// RAM in shared memory (a memfd backend) and, on the microvm machine, the
// modern virtio-mmio transport (libvhost-user refuses legacy devices,
// which microvm gives by default). The daemon exits when QEMU hangs up;
// Stop ends any that remain.

// sharedMemID is the id of the guest RAM backend of a VM with shared
// folders.
const sharedMemID = "mem"

// maxTagLen is the size of virtio-fs's tag field.
const maxTagLen = 36

// sharedMemArgs puts the guest RAM of a VM with shared folders in a
// shared memfd (the machine names it with memory-backend=) and makes the
// virtio-mmio devices modern.
func sharedMemArgs(vm vmm.VM) []string {
	if len(vm.SharedDirs) == 0 {
		return nil
	}
	return []string{
		"-object", "memory-backend-memfd,id=" + sharedMemID + ",size=" + strconv.Itoa(vm.MemoryMB) + "M,share=on",
		"-global", "virtio-mmio.force-legacy=false",
	}
}

// sharedDirArgs are the vhost-user-fs devices of vm.SharedDirs, connected
// to sockets (in order).
func sharedDirArgs(vm vmm.VM, sockets []string) []string {
	var args []string
	for i, sd := range vm.SharedDirs {
		if i >= len(sockets) {
			break
		}
		id := fmt.Sprintf("fs%d", i)
		args = append(args,
			"-chardev", fmt.Sprintf("socket,id=%s,path=%s", id, optEscape(sockets[i])),
			"-device", fmt.Sprintf("vhost-user-fs-device,chardev=%s,tag=%s", id, optEscape(sd.Tag)))
	}
	return args
}

// validateShares checks vm.SharedDirs against what the provider has.
func (p *Provider) validateShares(vm vmm.VM) error {
	if len(vm.SharedDirs) == 0 {
		return nil
	}
	if p.virtiofsd == nil {
		return fmt.Errorf("vm %q: shared folders need virtiofsd, which is not installed: %w", vm.UID, errdefs.ErrFailedPrecondition)
	}
	tags := map[string]bool{}
	for i, sd := range vm.SharedDirs {
		switch {
		case sd.Tag == "" || len(sd.Tag) > maxTagLen:
			return fmt.Errorf("vm %q: shared folder %d: tag %q must be 1 to %d bytes: %w", vm.UID, i, sd.Tag, maxTagLen, errdefs.ErrInvalidArgument)
		case tags[sd.Tag]:
			return fmt.Errorf("vm %q: shared folder tag %q used twice: %w", vm.UID, sd.Tag, errdefs.ErrInvalidArgument)
		case !filepath.IsAbs(sd.HostPath):
			return fmt.Errorf("vm %q: shared folder %q: %q is not absolute: %w", vm.UID, sd.Tag, sd.HostPath, errdefs.ErrInvalidArgument)
		}
		tags[sd.Tag] = true
	}
	return nil
}

// startShares starts the virtiofsd daemons of vm (none without shared
// folders) and returns their sockets for QEMU.
func (p *Provider) startShares(ctx context.Context, vm vmm.VM, logf *os.File) ([]string, error) {
	if len(vm.SharedDirs) == 0 {
		return nil, nil
	}
	return p.virtiofsd.Start(ctx, vm.UID, vm.Dir, vm.SharedDirs, logf, p.opts.User)
}

// stopShares ends the virtiofsd daemons of VM uid that still run. The
// /proc scan is skipped for a VM folder without virtiofsd sockets.
func (p *Provider) stopShares(uid, dir string) error {
	if p.virtiofsd == nil || !process.HasVirtiofsSockets(dir, uid) {
		return nil
	}
	return p.virtiofsd.Stop(uid)
}
