package qemu

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/vmmtest"
)

// writerInit replaces the test root's /sbin/init: it writes a marker at
// the start of the second disk (the writable one) and powers off.
const writerInit = `#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
printf LMTEST-WRITTEN >/dev/vdb && sync && echo "LMTEST wrote"
ip link show eth0 >/dev/null 2>&1 && echo "LMTEST net eth0"
poweroff -f
`

// TestUnprivilegedVMM: with a VMM user, QEMU runs as that uid and gid,
// boots from a root disk, writes its writable disk, gets its TAP (opened
// for it) and leaves nothing it may not touch writable.
func TestUnprivilegedVMM(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: needs root")
	}
	a := guest(t)
	u := process.User{Name: "64123", UID: 64123, GID: 64123}
	p, _ := newProvider(t, Options{User: u})
	vm := newVM(t, p)
	// The VM folder is private to root, as the daemon's is, and holds its
	// own kernel and initrd, as the reconciler arranges.
	if err := os.Chmod(filepath.Dir(vm.Dir), 0o700); err != nil {
		t.Fatal(err)
	}
	vm.KernelPath, vm.InitrdPath = filepath.Join(vm.Dir, "kernel"), filepath.Join(vm.Dir, "initrd")
	vmmtest.Run(t, "cp", a.Vmlinuz, vm.KernelPath)
	vmmtest.Run(t, "cp", a.Initrd, vm.InitrdPath)
	vmmtest.Run(t, "chmod", "0600", vm.KernelPath, vm.InitrdPath)

	tree := filepath.Join(t.TempDir(), "root")
	vmmtest.Run(t, "cp", "-a", a.RootFSDir, tree)
	if err := os.Remove(filepath.Join(tree, "sbin", "init")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "sbin", "init"), []byte(writerInit), 0o755); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(vm.Dir, "root.img")
	vmmtest.Run(t, "mkfs.ext4", "-q", "-F", "-d", tree, root, "32M")
	data := filepath.Join(vm.Dir, "data.img")
	if err := os.WriteFile(data, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	vmmtest.Run(t, "chmod", "0600", root)
	vm.Disks = []vmm.Disk{{ID: "root", Path: root, ReadOnly: true}, {ID: "data", Path: data}}
	tap := fmt.Sprintf("lmqu%05x", rand.IntN(1<<20))
	vmmtest.HostLink(t, tap, "tuntap", "add", "dev", tap, "mode", "tap")
	vm.Nets = []vmm.NetDevice{{HostDevice: tap, GuestMAC: "02:11:22:33:44:09"}}

	ctx := vmmtest.Ctx(t, 3*time.Minute)
	st, err := p.Start(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if uid, gid := vmmtest.ProcIDs(t, st.Pid); uid != "64123" || gid != "64123" {
		t.Fatalf("qemu runs as %s:%s, want 64123:64123", uid, gid)
	}
	ch, err := p.Wait(ctx, vm.UID, vm.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if !vmmtest.Closed(ch, 150*time.Second) {
		t.Fatal("the guest did not power off")
	}
	console, _ := os.ReadFile(filepath.Join(vm.Dir, process.ConsoleFile))
	if !strings.Contains(string(console), "LMTEST wrote") || !strings.Contains(string(console), "LMTEST net eth0") {
		t.Fatalf("the guest did not write its disk or see its TAP; console:\n%s\nvmm.log:\n%s",
			tail(string(console), 30), readFile(filepath.Join(vm.Dir, process.LogFile)))
	}
	b, err := os.ReadFile(data)
	if err != nil || !strings.HasPrefix(string(b), "LMTEST-WRITTEN") {
		t.Fatalf("the writable disk does not hold the guest's write: %q %v", b[:16], err)
	}
	// Read-only files stay root's; the VMM's group reads them.
	for _, f := range []string{vm.KernelPath, vm.InitrdPath, root} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o022 != 0 || fi.Mode().Perm()&0o040 == 0 {
			t.Errorf("%s: mode %v, want group read, no group or other write", f, fi.Mode().Perm())
		}
	}
	if !vmmtest.FileContains(filepath.Join(vm.Dir, process.CmdlineFile), "tap,id=net0,fd=4") {
		t.Error("vmm.cmdline: the TAP is not passed as a descriptor")
	}
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// statusOf reports a dead guest behind a live QEMU as failed.
func TestStatusOfFailedGuest(t *testing.T) {
	for _, tc := range []struct {
		qs   qmpStatus
		want vmm.State
	}{
		{qmpStatus{Status: "running", Running: true}, vmm.StateRunning},
		{qmpStatus{Status: "paused"}, vmm.StatePaused},
		{qmpStatus{Status: "guest-panicked"}, vmm.StateFailed},
		{qmpStatus{Status: "internal-error"}, vmm.StateFailed},
	} {
		st := statusOf(7, tc.qs)
		if st.State != tc.want || st.Pid != 7 {
			t.Errorf("%+v: %+v, want %s", tc.qs, st, tc.want)
		}
		if tc.want == vmm.StateFailed && !strings.Contains(st.Reason, tc.qs.Status) {
			t.Errorf("%+v: reason %q does not name the status", tc.qs, st.Reason)
		}
	}
}

// The backing chain of a qcow2 overlay is found, relative names resolved.
func TestBackingFiles(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	mid, top := filepath.Join(dir, "mid.qcow2"), filepath.Join(dir, "top.qcow2")
	vmmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid)
	vmmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
	chain, err := backingFiles(top)
	if err != nil || len(chain) != 2 || chain[0] != mid || chain[1] != base {
		t.Fatalf("chain %v, %v; want [%s %s]", chain, err, mid, base)
	}
	if chain, err := backingFiles(base); err != nil || len(chain) != 0 {
		t.Fatalf("raw: %v %v", chain, err)
	}
}
