package cloudhypervisor

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/vmmtest"
)

func TestNewOptions(t *testing.T) {
	if _, err := New(Options{Binary: "no-such-cloud-hypervisor"}); err == nil {
		t.Error("a missing binary was accepted")
	}
	if _, err := New(Options{Binary: filepath.Join(fakeBin, "cloud-hypervisor"), Virtiofsd: "/no/such/virtiofsd"}); err == nil {
		t.Error("a missing virtiofsd was accepted")
	}
	p := newProvider(t, Options{})
	if p.Name() != "cloudhypervisor" {
		t.Errorf("name %q", p.Name())
	}
	// This host has QEMU's virtiofsd (qemu-system-common).
	if c := p.Capabilities(); !c.NoCloudDisk || !c.VirtioFS || !c.MacVTap || !c.GuestAgent || !c.UncompressedKernel || p.virtiofsd == "" {
		t.Errorf("capabilities %+v (virtiofsd %q)", c, p.virtiofsd)
	}
	noFS := &Provider{}
	if noFS.Capabilities().VirtioFS {
		t.Error("virtio-fs without a virtiofsd")
	}
	dir := t.TempDir()
	ctx := vmmtest.Ctx(t, 5*time.Second)
	if st, err := p.Status(ctx, "U", dir); err != nil || st.State != vmm.StateNotStarted {
		t.Errorf("status: %+v, %v", st, err)
	}
	if err := p.Resume(ctx, vmm.VM{UID: "U", Dir: dir}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("resume without process: %v", err)
	}
	if _, err := p.Counters(ctx, "U", dir); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("counters without process: %v", err)
	}
}

func TestValidate(t *testing.T) {
	p := newProvider(t, Options{})
	dir := t.TempDir()
	elf, bz := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "bzImage")
	vmmtest.FakeELF(t, elf)
	if err := os.WriteFile(bz, []byte("MZ bzImage"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := vmm.VM{UID: "U", Dir: dir, VCPU: 1, MemoryMB: 128, KernelPath: elf}
	if err := p.validate(good); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(*vmm.VM){
		"uid":       func(vm *vmm.VM) { vm.UID = "a/b" },
		"dir":       func(vm *vmm.VM) { vm.Dir = "rel" },
		"vcpu":      func(vm *vmm.VM) { vm.VCPU = 0 },
		"bzImage":   func(vm *vmm.VM) { vm.KernelPath = bz },
		"format":    func(vm *vmm.VM) { vm.Disks = []vmm.Disk{{Path: "/d", Format: "vmdk"}} },
		"macvtap":   func(vm *vmm.VM) { vm.Nets = []vmm.NetDevice{{MacVTap: true, HostDevice: "m"}} },
		"tap":       func(vm *vmm.VM) { vm.Nets = []vmm.NetDevice{{}} },
		"share tag": func(vm *vmm.VM) { vm.SharedDirs = []vmm.SharedDir{{HostPath: "/srv"}} },
		"share dup": func(vm *vmm.VM) {
			vm.SharedDirs = []vmm.SharedDir{{Tag: "a", HostPath: "/x"}, {Tag: "a", HostPath: "/y"}}
		},
		"share path": func(vm *vmm.VM) { vm.SharedDirs = []vmm.SharedDir{{Tag: "a", HostPath: "/x,y"}} },
	} {
		vm := good
		edit(&vm)
		if err := p.validate(vm); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
	}
	vm := good
	vm.SharedDirs = []vmm.SharedDir{{Tag: "a", HostPath: "/x"}}
	if err := noVirtiofsd(p).validate(vm); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("share without virtiofsd: %v", err)
	}
}

func noVirtiofsd(p *Provider) *Provider {
	c := *p
	c.virtiofsd = ""
	return &c
}

// virtiofsdPids returns the virtiofsd daemons serving VM uid (QEMU's
// virtiofsd forks into its sandbox: the child is not counted).
func virtiofsdPids(t *testing.T, uid string) []int {
	t.Helper()
	pids, err := process.Find(func(argv []string) bool { return virtiofsdUID(argv) == uid })
	if err != nil {
		t.Fatal(err)
	}
	set := map[int]bool{}
	for _, pid := range pids {
		set[pid] = true
	}
	var top []int
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // gone meanwhile
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if ppid, _ := strconv.Atoi(f[1]); !set[ppid] {
			top = append(top, pid)
		}
	}
	return top
}

// The whole life of a VM against the stand-in cloud-hypervisor, with a
// real TAP device, a real macvtap (its descriptor passed with vm.add-net)
// and a real virtiofsd serving a shared folder.
func TestLifecycle(t *testing.T) {
	p := newProvider(t, Options{})
	vm := newVM(t, p)
	tag := fmt.Sprintf("%05x", rand.IntN(1<<20))
	tap, veth, mvtap := "lmct"+tag, "lmcv"+tag, "lmcm"+tag
	vmmtest.HostLink(t, tap, "tuntap", "add", "dev", tap, "mode", "tap")
	vmmtest.HostLink(t, veth, "link", "add", veth, "type", "veth", "peer", "name", "lmcp"+tag)
	vmmtest.HostLink(t, mvtap, "link", "add", "link", veth, "name", mvtap, "type", "macvtap", "mode", "bridge")
	idx, err := strconv.Atoi(vmmtest.SysNet(t, mvtap, "ifindex"))
	if err != nil {
		t.Fatal(err)
	}
	mvMAC := vmmtest.SysNet(t, mvtap, "address")
	vm.Nets = []vmm.NetDevice{
		{HostDevice: mvtap, HostIndex: idx, MacVTap: true, GuestMAC: mvMAC},
		{HostDevice: tap, GuestMAC: "02:aa:bb:cc:dd:02"},
	}
	share := t.TempDir()
	vm.SharedDirs = []vmm.SharedDir{{Tag: "shared", HostPath: share}}
	vm.GuestAgent = true
	ctx := vmmtest.Ctx(t, time.Minute)

	st, err := p.Start(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != vmm.StateRunning || st.Pid <= 0 {
		t.Fatalf("after Start: %+v", st)
	}
	pid := st.Pid
	d := vm.Dir
	console := filepath.Join(d, process.ConsoleFile)
	vmmtest.Eventually(t, 5*time.Second, "the boot on the console", func() bool { return vmmtest.FileContains(console, "fake-init: running") })
	if !vmmtest.FileContains(console, "Command line: console=ttyS0 root=/dev/vda rw") {
		t.Error("the guest did not get its kernel command line")
	}
	fsSock := filepath.Join(d, fsSocketName(vm.UID, 0))
	vmmtest.CheckCalls(t, journal(t, filepath.Join(d, runDir, "fake-cloud-hypervisor.journal")), []vmmtest.WantCall{
		{Method: "PUT", Path: "/api/v1/vm.create", Body: `{
			"cpus": {"boot_vcpus": 2, "max_vcpus": 2},
			"memory": {"size": 268435456, "shared": true},
			"payload": {"kernel": "` + d + `/kernel", "cmdline": "console=ttyS0 root=/dev/vda rw"},
			"disks": [
				{"path": "` + d + `/root.img", "readonly": false, "id": "disk0", "serial": "root"},
				{"path": "` + d + `/cidata.img", "readonly": true, "id": "disk1", "serial": "cidata"}],
			"fs": [{"tag": "shared", "socket": "` + fsSock + `", "num_queues": 1, "queue_size": 1024, "id": "fs0"}],
			"serial": {"mode": "Tty"},
			"console": {"mode": "Off"},
			"vsock": {"cid": 3, "socket": "` + d + `/run/vsock.sock"}}`},
		{Method: "PUT", Path: "/api/v1/vm.add-net", Body: `{"mac": "` + mvMAC + `", "id": "net0"}`, FDs: 1},
		{Method: "PUT", Path: "/api/v1/vm.add-net", Body: `{"tap": "` + tap + `", "mac": "02:aa:bb:cc:dd:02", "id": "net1"}`},
		{Method: "PUT", Path: "/api/v1/vm.boot"},
	})
	if !vmmtest.FileContains(filepath.Join(d, process.CmdlineFile), "ch-"+vm.UID+".sock") {
		t.Error("vmm.cmdline lacks the uid marker")
	}
	if got, err := process.ReadPidFile(filepath.Join(d, process.PidFile)); err != nil || got != pid {
		t.Errorf("pid file: %d, %v; want %d", got, err, pid)
	}

	// virtiofsd serves the share, connected to the VMM.
	vfs := virtiofsdPids(t, vm.UID)
	if len(vfs) != 1 {
		t.Fatalf("%d virtiofsd processes, want 1", len(vfs))
	}
	// The macvtap descriptor is held by the VMM: it shows in its fd table.
	if !holdsFile(t, pid, fmt.Sprintf("/dev/tap%d", idx)) {
		t.Error("the VMM does not hold the macvtap device")
	}

	// Counters from the API, per device.
	counters, err := p.Counters(ctx, vm.UID, d)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"disk0", "disk1", "net0", "net1"} {
		if _, ok := counters[id]; !ok {
			t.Errorf("no counters for %s: %v", id, counters)
		}
	}

	// The guest agent's socket.
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

	// Start again: the same process, no second one (nor a second virtiofsd).
	st2, err := p.Start(ctx, vm)
	if err != nil || st2.Pid != pid || st2.State != vmm.StateRunning {
		t.Fatalf("second Start: %+v, %v", st2, err)
	}
	if n := vmmCount(t, p, vm.UID); n != 1 {
		t.Fatalf("%d vmm processes after two Starts", n)
	}
	if n := len(virtiofsdPids(t, vm.UID)); n != 1 {
		t.Fatalf("%d virtiofsd after two Starts", n)
	}

	// Pause and resume.
	if err := p.Pause(ctx, vm.UID, d); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Status(ctx, vm.UID, d); err != nil || st.State != vmm.StatePaused {
		t.Fatalf("after Pause: %+v, %v", st, err)
	}
	if err := p.Resume(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Status(ctx, vm.UID, d); err != nil || st.State != vmm.StateRunning {
		t.Fatalf("after Resume: %+v, %v", st, err)
	}

	ch, err := p.Wait(ctx, vm.UID, d)
	if err != nil {
		t.Fatal(err)
	}
	// Stop: the power button; the guest powers off, which ends the VMM,
	// and virtiofsd with it.
	if err := p.Stop(ctx, vm.UID, d, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("Wait channel open after Stop")
	}
	calls := journal(t, filepath.Join(d, runDir, "fake-cloud-hypervisor.journal"))
	vmmtest.CheckCalls(t, calls[len(calls)-3:], []vmmtest.WantCall{
		{Method: "PUT", Path: "/api/v1/vm.pause"},
		{Method: "PUT", Path: "/api/v1/vm.resume"},
		{Method: "PUT", Path: "/api/v1/vm.power-button"},
	})
	st, err = p.Status(ctx, vm.UID, d)
	if err != nil || st.State != vmm.StateExited || !strings.HasPrefix(st.Reason, "reboot: Power down") {
		t.Fatalf("Status after Stop: %+v, %v", st, err)
	}
	vmmtest.Eventually(t, 5*time.Second, "virtiofsd to end", func() bool { return len(virtiofsdPids(t, vm.UID)) == 0 })
	if _, err := process.State(pid); !errdefs.IsNotFound(err) {
		t.Errorf("cloud-hypervisor %d still in the process table: %v", pid, err)
	}
}

// holdsFile reports whether process pid has path open.
func holdsFile(t *testing.T, pid int, path string) bool {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && target == path {
			return true
		}
	}
	return false
}

// A guest that ignores the power button: after the timeout, vm.shutdown,
// vm.delete and vmm.shutdown end the VMM.
func TestStopEscalates(t *testing.T) {
	p := newProvider(t, Options{})
	vm := newVM(t, p)
	vm.Cmdline += " fake.ignore_acpi"
	ctx := vmmtest.Ctx(t, time.Minute)
	if _, err := p.Start(ctx, vm); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.Stop(ctx, vm.UID, vm.Dir, 400*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 400*time.Millisecond || el > 3*time.Second {
		t.Errorf("stop took %v", el)
	}
	calls := journal(t, filepath.Join(vm.Dir, runDir, "fake-cloud-hypervisor.journal"))
	vmmtest.CheckCalls(t, calls[len(calls)-4:], []vmmtest.WantCall{
		{Method: "PUT", Path: "/api/v1/vm.power-button"},
		{Method: "PUT", Path: "/api/v1/vm.shutdown"},
		{Method: "PUT", Path: "/api/v1/vm.delete"},
		{Method: "PUT", Path: "/api/v1/vmm.shutdown"},
	})
	st, err := p.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st.State != vmm.StateExited || !strings.Contains(st.Reason, "stop: quit") || !strings.Contains(st.Reason, "exit status 0") {
		t.Fatalf("status: %+v, %v", st, err)
	}
}

// StartPaused creates the VM but boots it only on Resume; a VM shut down
// (or deleted) through the API while the VMM lives is a dead guest behind
// a live VMM: failed, so supervision applies.
func TestStartPausedAndShutdown(t *testing.T) {
	p := newProvider(t, Options{})
	vm := newVM(t, p)
	vm.StartPaused = true
	ctx := vmmtest.Ctx(t, time.Minute)
	st, err := p.Start(ctx, vm)
	if err != nil || st.State != vmm.StatePaused {
		t.Fatalf("Start paused: %+v, %v", st, err)
	}
	for _, c := range journal(t, filepath.Join(vm.Dir, runDir, "fake-cloud-hypervisor.journal")) {
		if c.Path == "/api/v1/vm.boot" {
			t.Fatal("booted before Resume")
		}
	}
	if err := p.Resume(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Status(ctx, vm.UID, vm.Dir); err != nil || st.State != vmm.StateRunning {
		t.Fatalf("after Resume: %+v, %v", st, err)
	}
	vmmtest.Eventually(t, 5*time.Second, "the boot", func() bool {
		return vmmtest.FileContains(filepath.Join(vm.Dir, process.ConsoleFile), "fake-init: running")
	})

	resp, err := process.Do(ctx, sock(vm.UID, vm.Dir), "PUT", "/api/v1/vm.shutdown", nil, nil)
	if err != nil || resp.Status != 204 {
		t.Fatalf("vm.shutdown: %+v, %v", resp, err)
	}
	st, err = p.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st.State != vmm.StateFailed || st.Pid == 0 || !strings.Contains(st.Reason, "shut down") {
		t.Fatalf("status of a shut-down VM: %+v, %v", st, err)
	}
	resp, err = process.Do(ctx, sock(vm.UID, vm.Dir), "PUT", "/api/v1/vm.delete", nil, nil)
	if err != nil || resp.Status != 204 {
		t.Fatalf("vm.delete: %+v, %v", resp, err)
	}
	st, err = p.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st.State != vmm.StateFailed || st.Pid == 0 || !strings.Contains(st.Reason, "without a VM") || !strings.Contains(st.Reason, "VM is not created") {
		t.Fatalf("status of a deleted VM: %+v, %v", st, err)
	}
}

// TestGuestStateMapping: vm.info's states as the supervisor sees them.
func TestGuestStateMapping(t *testing.T) {
	for state, want := range map[string]vmm.State{
		"Running": vmm.StateRunning, "Paused": vmm.StatePaused, "Created": vmm.StatePaused,
		"BreakPoint": vmm.StatePaused, "Shutdown": vmm.StateFailed, "Crashed": vmm.StateFailed,
	} {
		got := guestState(state)
		if got.State != want || (want == vmm.StateFailed && got.Reason == "") {
			t.Errorf("state %q: %+v, want %s", state, got, want)
		}
	}
}

// kill -9 of the VMM is seen by Wait and Status; a second provider (a
// restarted daemon) finds a running VMM by its command line and controls
// it.
func TestKillAndReadopt(t *testing.T) {
	p1 := newProvider(t, Options{})
	vm := newVM(t, p1)
	ctx := vmmtest.Ctx(t, time.Minute)
	st, err := p1.Start(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	p2 := newProvider(t, Options{})
	if err := os.Remove(filepath.Join(vm.Dir, process.PidFile)); err != nil {
		t.Fatal(err)
	}
	st2, err := p2.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st2.State != vmm.StateRunning || st2.Pid != st.Pid {
		t.Fatalf("second provider: %+v, %v", st2, err)
	}
	if again, err := p2.Start(ctx, vm); err != nil || again.Pid != st.Pid {
		t.Fatalf("second provider's Start: %+v, %v", again, err)
	}
	if err := p2.Pause(ctx, vm.UID, vm.Dir); err != nil {
		t.Fatal(err)
	}
	if err := p2.Resume(ctx, vm); err != nil {
		t.Fatal(err)
	}
	ch1, err := p1.Wait(ctx, vm.UID, vm.Dir)
	if err != nil {
		t.Fatal(err)
	}
	ch2, err := p2.Wait(ctx, vm.UID, vm.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(st.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i, ch := range []<-chan struct{}{ch1, ch2} {
		if !vmmtest.Closed(ch, 5*time.Second) {
			t.Fatalf("Wait channel %d still open 5s after kill -9", i+1)
		}
	}
	if st1, err := p1.Status(ctx, vm.UID, vm.Dir); err != nil || st1.State != vmm.StateExited || !strings.Contains(st1.Reason, "signal: killed") {
		t.Fatalf("Status after kill: %+v, %v", st1, err)
	}
	if st2, err := p2.Status(ctx, vm.UID, vm.Dir); err != nil || st2.State != vmm.StateExited {
		t.Fatalf("second provider's Status after kill: %+v, %v", st2, err)
	}
}

// Cloud Hypervisor's refusals come back from Start with its message chain,
// and leave no process behind (virtiofsd included).
func TestAPIErrors(t *testing.T) {
	p := newProvider(t, Options{})
	ctx := vmmtest.Ctx(t, time.Minute)
	vm := newVM(t, p)
	vm.Disks[0].Path = filepath.Join(vm.Dir, "missing.img")
	vm.SharedDirs = []vmm.SharedDir{{Tag: "s", HostPath: t.TempDir()}}
	_, err := p.Start(ctx, vm)
	var apiErr *process.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 500 ||
		!strings.Contains(err.Error(), "PUT /api/v1/vm.boot: 500 Internal Server Error: Error from API: The VM could not boot: Error manipulating VM: Cannot create virtio-blk device") ||
		!strings.Contains(err.Error(), "missing.img") {
		t.Fatalf("missing disk: %v", err)
	}
	if n := vmmCount(t, p, vm.UID); n != 0 {
		t.Fatalf("%d processes left after a failed start", n)
	}
	vmmtest.Eventually(t, 5*time.Second, "virtiofsd to end", func() bool { return len(virtiofsdPids(t, vm.UID)) == 0 })
	st, err := p.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st.State != vmm.StateExited || !strings.Contains(st.Reason, "start failed: ") {
		t.Fatalf("status after failed start: %+v, %v", st, err)
	}

	bad := newProvider(t, Options{ExtraArgs: []string{"--no-such-flag"}})
	vm2 := newVM(t, bad)
	if _, err := bad.Start(ctx, vm2); err == nil || !strings.Contains(err.Error(), "vmm exited during start") || !strings.Contains(err.Error(), "--no-such-flag") {
		t.Fatalf("bad flag: %v", err)
	}
}
