package cloudhypervisor

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/vmmtest"
)

// owner returns a file's uid, gid and permission bits.
func owner(t *testing.T, path string) (uint32, uint32, os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid, fi.Mode().Perm()
}

// TestUnprivilegedVMM: with a VMM user the stand-in cloud-hypervisor runs
// as that (real, unprivileged) uid and still boots: it opens the kernel
// and disks it was granted, creates its API and vsock sockets in run/,
// connects to virtiofsd, and gets its TAP device as a descriptor with
// vm.add-net (never by name).
func TestUnprivilegedVMM(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a process as another user")
	}
	// The fake's folder must be reachable by the user.
	if err := os.Chmod(fakeBin, 0o755); err != nil {
		t.Fatal(err)
	}
	u := process.User{Name: "64123", UID: 64123, GID: 64123}
	p := newProvider(t, Options{User: u})
	vm := newVM(t, p)
	tap := fmt.Sprintf("lmcu%05x", rand.IntN(1<<20))
	vmmtest.HostLink(t, tap, "tuntap", "add", "dev", tap, "mode", "tap")
	vm.Nets = []vmm.NetDevice{{HostDevice: tap, GuestMAC: "02:aa:bb:cc:dd:09"}}
	ro := filepath.Join(vm.Dir, "data.img")
	vmmtest.BlankFile(t, ro, 1<<20)
	vm.Disks = append([]vmm.Disk{vm.Disks[0], {ID: "data", Path: ro, ReadOnly: true}}, vm.Disks[1:]...)
	vm.SharedDirs = []vmm.SharedDir{{Tag: "shared", HostPath: t.TempDir()}}
	vm.GuestAgent = true
	ctx := vmmtest.Ctx(t, time.Minute)

	st, err := p.Start(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != vmm.StateRunning {
		t.Fatalf("after Start: %+v", st)
	}
	if uid, gid := vmmtest.ProcIDs(t, st.Pid); uid != "64123" || gid != "64123" {
		t.Fatalf("cloud-hypervisor runs as %s:%s, want 64123:64123", uid, gid)
	}
	d := vm.Dir
	vmmtest.Eventually(t, 5*time.Second, "the boot", func() bool { return vmmtest.FileContains(filepath.Join(d, process.ConsoleFile), "fake-init: running") })

	// The TAP went as a descriptor: no name in any document.
	vmmtest.CheckCalls(t, journal(t, filepath.Join(d, runDir, "fake-cloud-hypervisor.journal")), []vmmtest.WantCall{
		{Method: "PUT", Path: "/api/v1/vm.create", Body: `{
			"cpus": {"boot_vcpus": 2, "max_vcpus": 2},
			"memory": {"size": 268435456, "shared": true},
			"payload": {"kernel": "` + d + `/kernel", "cmdline": "console=ttyS0 root=/dev/vda rw"},
			"disks": [
				{"path": "` + d + `/root.img", "readonly": false, "id": "disk0", "serial": "root"},
				{"path": "` + ro + `", "readonly": true, "id": "disk1", "serial": "data"},
				{"path": "` + d + `/cidata.img", "readonly": true, "id": "disk2", "serial": "cidata"}],
			"fs": [{"tag": "shared", "socket": "` + filepath.Join(d, fsSocketName(vm.UID, 0)) + `", "num_queues": 1, "queue_size": 1024, "id": "fs0"}],
			"serial": {"mode": "Tty"},
			"console": {"mode": "Off"},
			"vsock": {"cid": 3, "socket": "` + d + `/run/vsock.sock"}}`},
		{Method: "PUT", Path: "/api/v1/vm.add-net", Body: `{"mac": "02:aa:bb:cc:dd:09", "id": "net0"}`, FDs: 1},
		{Method: "PUT", Path: "/api/v1/vm.boot"},
	})
	if !holdsFile(t, st.Pid, "/dev/net/tun") {
		t.Error("the VMM does not hold the TAP's descriptor")
	}
	if b, err := os.ReadFile(filepath.Join(d, process.ConfigFile)); err != nil || strings.Contains(string(b), tap) {
		t.Errorf("vmm.config.json names the TAP (%v):\n%s", err, b)
	}

	// What was granted, and what the VMM made itself.
	for _, c := range []struct {
		path     string
		uid, gid uint32
		perm     os.FileMode
	}{
		{d, 0, 64123, 0o750},
		{filepath.Join(d, runDir), 64123, 64123, 0o750},
		{vm.Disks[0].Path, 64123, 64123, 0o640},
		{filepath.Join(d, fsSocketName(vm.UID, 0)), 0, 64123, 0o660},
	} {
		uid, gid, perm := owner(t, c.path)
		if uid != c.uid || gid != c.gid || (c.perm != 0 && perm != c.perm) {
			t.Errorf("%s: %d:%d %o, want %d:%d %o", c.path, uid, gid, perm, c.uid, c.gid, c.perm)
		}
	}
	// Read only: root's, readable by the group, writable by nobody else.
	for _, f := range []string{vm.KernelPath, ro, vm.Disks[2].Path} {
		if uid, gid, perm := owner(t, f); uid != 0 || gid != 64123 || perm&0o040 == 0 || perm&0o022 != 0 {
			t.Errorf("%s: %d:%d %o, want root:64123 g+r, no g/o write", f, uid, gid, perm)
		}
	}
	if uid, _, _ := owner(t, sock(vm.UID, d)); uid != 64123 {
		t.Errorf("the API socket was made by uid %d, not the VMM user", uid)
	}
	for _, f := range []string{process.ConsoleFile, process.LogFile, process.PidFile} {
		if uid, _, _ := owner(t, filepath.Join(d, f)); uid != 0 {
			t.Errorf("%s owned by %d: the daemon's file was given away", f, uid)
		}
	}

	// The guest agent's socket, through its link in the VM folder.
	conn, err := net.Dial("unix", filepath.Join(d, vmm.GuestAgentSocket))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "CONNECT 52\n")
	line, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if err != nil || !strings.HasPrefix(line, "OK ") {
		t.Errorf("vsock CONNECT: %q, %v", line, err)
	}

	if err := p.Stop(ctx, vm.UID, d, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Status(ctx, vm.UID, d); err != nil || st.State != vmm.StateExited {
		t.Fatalf("after Stop: %+v, %v", st, err)
	}
}
