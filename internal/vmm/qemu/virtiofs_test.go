package qemu

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/vmmtest"
)

func TestSharedDirArgs(t *testing.T) {
	vm := vmm.VM{UID: "U1", Dir: "/vm", VCPU: 1, MemoryMB: 384, KernelPath: "/k",
		SharedDirs: []vmm.SharedDir{{Tag: "data", HostPath: "/srv/a"}, {Tag: "b,c", HostPath: "/srv/b"}}}
	l := launch{binary: "qemu", vm: vm, accel: "tcg", tscKHz: 1, qmpFD: 3,
		fsSockets: []string{"/vm/virtiofs-U1-0.sock", "virtiofs-U1-1.sock"}}
	args := buildArgs(l)
	joined := strings.Join(args, " ")
	for _, want := range []string{
		"-M microvm,accel=tcg,rtc=on,memory-backend=mem ",
		"-m 384 ",
		"-object memory-backend-memfd,id=mem,size=384M,share=on ",
		"-global virtio-mmio.force-legacy=false ",
		"-chardev socket,id=fs0,path=/vm/virtiofs-U1-0.sock -device vhost-user-fs-device,chardev=fs0,tag=data ",
		"-chardev socket,id=fs1,path=virtiofs-U1-1.sock -device vhost-user-fs-device,chardev=fs1,tag=b,,c",
	} {
		if !strings.Contains(joined+" ", want) {
			t.Errorf("args lack %q:\n%s", want, joined)
		}
	}
	// The devices come after the disks and network devices: adding a
	// share renames no disk.
	if i, j := slices.Index(args, "-append"), slices.Index(args, "vhost-user-fs-device,chardev=fs0,tag=data"); i < 0 || j < i {
		t.Errorf("shared folder device at %d, -append at %d", j, i)
	}

	// Without shares: the machine's own RAM, legacy virtio-mmio.
	l.vm.SharedDirs, l.fsSockets = nil, nil
	plain := strings.Join(buildArgs(l), " ")
	for _, no := range []string{"memory-backend", "-object", "-global", "vhost-user"} {
		if strings.Contains(plain, no) {
			t.Errorf("args without shares hold %q:\n%s", no, plain)
		}
	}
}

func TestValidateShares(t *testing.T) {
	p, _ := newProvider(t, Options{})
	if !p.Capabilities().VirtioFS || p.virtiofsd == nil {
		t.Fatalf("this host has virtiofsd (qemu-system-common), capabilities %+v", p.Capabilities())
	}
	base := vmm.VM{UID: "u"}
	for _, tc := range []struct {
		shares []vmm.SharedDir
		want   error
	}{
		{[]vmm.SharedDir{{Tag: "a", HostPath: "/srv"}}, nil},
		{[]vmm.SharedDir{{Tag: "", HostPath: "/srv"}}, errdefs.ErrInvalidArgument},
		{[]vmm.SharedDir{{Tag: strings.Repeat("t", 37), HostPath: "/srv"}}, errdefs.ErrInvalidArgument},
		{[]vmm.SharedDir{{Tag: "a", HostPath: "/srv"}, {Tag: "a", HostPath: "/x"}}, errdefs.ErrInvalidArgument},
		{[]vmm.SharedDir{{Tag: "a", HostPath: "srv"}}, errdefs.ErrInvalidArgument},
	} {
		vm := base
		vm.SharedDirs = tc.shares
		err := p.validateShares(vm)
		if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%+v: %v, want %v", tc.shares, err, tc.want)
		}
	}
	// No virtiofsd: a clear FailedPrecondition.
	none := &Provider{}
	vm := base
	vm.SharedDirs = []vmm.SharedDir{{Tag: "a", HostPath: "/srv"}}
	if err := none.validateShares(vm); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("without virtiofsd: %v", err)
	}
	if none.Capabilities().VirtioFS {
		t.Error("virtio-fs without a virtiofsd")
	}
	if _, err := New(Options{Virtiofsd: "/no/such/virtiofsd"}); err == nil {
		t.Error("a missing virtiofsd was accepted")
	}
}

// shareInit replaces the test root's /sbin/init: it mounts the "shared"
// tag, prints the host's file, writes one of its own and powers off.
const shareInit = `#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mkdir -p /mnt/shared
if mount -t virtiofs shared /mnt/shared; then
	echo "LMTEST read $(cat /mnt/shared/from-host)"
	echo "$(cat /mnt/shared/from-host)-back" >/mnt/shared/from-guest && sync && echo "LMTEST wrote"
	umount /mnt/shared
else
	echo "LMTEST mount failed"
fi
if grep -q lmidle /proc/cmdline; then
	echo "LMTEST idle"
	while :; do sleep 60; done
fi
poweroff -f
`

// sharedVM is a VM booting a root disk with shareInit and the folder
// share as tag "shared".
func sharedVM(t *testing.T, p *Provider, share string) vmm.VM {
	t.Helper()
	a := guest(t)
	vm := newVM(t, p)
	tree := filepath.Join(t.TempDir(), "root")
	vmmtest.Run(t, "cp", "-a", a.RootFSDir, tree)
	if err := os.Remove(filepath.Join(tree, "sbin", "init")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "sbin", "init"), []byte(shareInit), 0o755); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(vm.Dir, "root.img")
	vmmtest.Run(t, "mkfs.ext4", "-q", "-F", "-d", tree, root, "32M")
	vm.Disks = []vmm.Disk{{ID: "root", Path: root}}
	vm.Cmdline = "root=/dev/vda rw"
	vm.SharedDirs = []vmm.SharedDir{{Tag: "shared", HostPath: share}}
	t.Cleanup(func() {
		if pids, _ := p.virtiofsd.Pids(vm.UID); len(pids) != 0 {
			t.Errorf("virtiofsd left running: %v", pids)
		}
	})
	return vm
}

// TestSharedFolder: an unprivileged QEMU gets a host folder over
// virtio-fs from a virtiofsd started before it: the guest reads the
// host's file and its own write appears on the host. The daemon's socket
// is reachable by the VMM user alone, and the daemon is gone once the
// guest has powered off.
func TestSharedFolder(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: needs root")
	}
	u := process.User{Name: "64124", UID: 64124, GID: 64124}
	p, _ := newProvider(t, Options{User: u})
	share := t.TempDir()
	marker := fmt.Sprintf("lm-%08x", rand.Uint32())
	if err := os.WriteFile(filepath.Join(share, "from-host"), []byte(marker+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	vm := sharedVM(t, p, share)

	ctx := vmmtest.Ctx(t, 3*time.Minute)
	st, err := p.Start(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if uid, _ := vmmtest.ProcIDs(t, st.Pid); uid != "64124" {
		t.Errorf("qemu runs as uid %s", uid)
	}
	sock := filepath.Join(vm.Dir, process.VirtiofsSocketName(vm.UID, 0))
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if sys := fi.Sys().(*syscall.Stat_t); sys.Uid != 0 || sys.Gid != u.GID || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket %s: %d:%d %v, want 0:%d 0660", sock, sys.Uid, sys.Gid, fi.Mode().Perm(), u.GID)
	}
	if !vmmtest.FileContains(filepath.Join(vm.Dir, process.CmdlineFile), "vhost-user-fs-device,chardev=fs0,tag=shared") {
		t.Error("vmm.cmdline lacks the virtio-fs device")
	}

	ch, err := p.Wait(ctx, vm.UID, vm.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if !vmmtest.Closed(ch, 150*time.Second) {
		t.Fatal("the guest did not power off")
	}
	console, _ := os.ReadFile(filepath.Join(vm.Dir, process.ConsoleFile))
	if !strings.Contains(string(console), "LMTEST read "+marker) || !strings.Contains(string(console), "LMTEST wrote") {
		t.Fatalf("the guest did not use the share; console:\n%s", console)
	}
	b, err := os.ReadFile(filepath.Join(share, "from-guest"))
	if err != nil || strings.TrimSpace(string(b)) != marker+"-back" {
		t.Fatalf("the guest's file on the host: %q, %v", b, err)
	}
	// virtiofsd ends when QEMU hangs up.
	vmmtest.Eventually(t, 10*time.Second, "virtiofsd to exit after qemu", func() bool {
		pids, err := p.virtiofsd.Pids(vm.UID)
		return err == nil && len(pids) == 0
	})
}

// TestSharedFolderRestartedDaemon: a provider started after the VM (as
// after a restart of flintlockd) finds the VM's virtiofsd and Stop ends
// it with QEMU.
func TestSharedFolderRestartedDaemon(t *testing.T) {
	p, _ := newProvider(t, Options{})
	vm := sharedVM(t, p, t.TempDir())
	vm.Cmdline += " lmidle"
	ctx := vmmtest.Ctx(t, 3*time.Minute)
	if _, err := p.Start(ctx, vm); err != nil {
		t.Fatal(err)
	}
	pids, err := p.virtiofsd.Pids(vm.UID)
	if err != nil || len(pids) == 0 {
		t.Fatalf("virtiofsd of a running VM: %v, %v", pids, err)
	}
	// Once the guest has mounted the share, the daemon serves it from its
	// sandbox.
	vmmtest.Eventually(t, 150*time.Second, "the guest to idle", func() bool {
		return vmmtest.FileContains(filepath.Join(vm.Dir, process.ConsoleFile), "LMTEST idle")
	})
	if !vmmtest.FileContains(filepath.Join(vm.Dir, process.ConsoleFile), "LMTEST wrote") {
		t.Fatal("the guest did not write to the share")
	}

	p2, _ := newProvider(t, Options{})
	st, err := p2.Start(ctx, vm) // idempotent: nothing new starts
	if err != nil || st.State != vmm.StateRunning {
		t.Fatalf("Start on the running VM: %+v, %v", st, err)
	}
	if err := p2.Stop(ctx, vm.UID, vm.Dir, 0); err != nil {
		t.Fatal(err)
	}
	if n := vmmCount(t, p2, vm.UID); n != 0 {
		t.Errorf("%d qemu processes after Stop", n)
	}
	if left, _ := p2.virtiofsd.Pids(vm.UID); len(left) != 0 {
		t.Errorf("virtiofsd left after Stop: %v", left)
	}
}

// TestSharedFolderStartFailure: when QEMU fails to start, the virtiofsd
// started for it does not stay; a missing folder and a read-only share
// on a virtiofsd without --readonly are refused before anything starts.
func TestSharedFolderStartFailure(t *testing.T) {
	p, _ := newProvider(t, Options{ExtraArgs: []string{"-no-such-option"}})
	vm := newVM(t, p)
	vm.SharedDirs = []vmm.SharedDir{{Tag: "shared", HostPath: t.TempDir()}}
	ctx := vmmtest.Ctx(t, time.Minute)
	if _, err := p.Start(ctx, vm); err == nil {
		t.Fatal("Start with a bad QEMU option succeeded")
	}
	if pids, _ := p.virtiofsd.Pids(vm.UID); len(pids) != 0 {
		t.Errorf("virtiofsd left after a failed start: %v", pids)
	}

	vm.SharedDirs = []vmm.SharedDir{{Tag: "shared", HostPath: filepath.Join(t.TempDir(), "missing")}}
	if _, err := p.Start(ctx, vm); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("a missing folder: %v", err)
	}
	if !p.virtiofsd.ReadOnly() {
		vm.SharedDirs = []vmm.SharedDir{{Tag: "shared", HostPath: t.TempDir(), ReadOnly: true}}
		if _, err := p.Start(ctx, vm); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "--readonly") {
			t.Errorf("a read-only share: %v", err)
		}
	}
	if n := vmmCount(t, p, vm.UID); n != 0 {
		t.Errorf("%d qemu processes", n)
	}
}
