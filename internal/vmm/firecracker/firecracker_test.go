package firecracker

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/vmmtest"
)

func TestNewOptions(t *testing.T) {
	if _, err := New(Options{Binary: "no-such-firecracker"}); err == nil {
		t.Error("a missing binary was accepted")
	}
	if _, err := New(Options{Binary: filepath.Join(fakeBin, "firecracker"), LogLevel: "Loud"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("log level: %v", err)
	}
	if _, err := New(Options{Binary: filepath.Join(fakeBin, "firecracker"), Jailer: &Jailer{Binary: filepath.Join(fakeBin, "jailer")}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("jailer as root: %v", err)
	}
	p := newProvider(t, Options{})
	if p.Name() != "firecracker" || p.opts.LogLevel != "Info" {
		t.Errorf("defaults: %q %q", p.Name(), p.opts.LogLevel)
	}
	if c := p.Capabilities(); !c.NoCloudDisk || c.VirtioFS || c.MacVTap || !c.GuestAgent || !c.UncompressedKernel {
		t.Errorf("capabilities %+v", c)
	}
	// Nothing started: not started, Wait closed, Resume refused.
	dir := t.TempDir()
	ctx := vmmtest.Ctx(t, 5*time.Second)
	if st, err := p.Status(ctx, "U", dir); err != nil || st.State != vmm.StateNotStarted {
		t.Errorf("status: %+v, %v", st, err)
	}
	ch, err := p.Wait(ctx, "U", dir)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Error("Wait channel of a VM without process is open")
	}
	if err := p.Resume(ctx, vmm.VM{UID: "U", Dir: dir}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("resume without process: %v", err)
	}
	if err := p.Stop(ctx, "U", dir, time.Second); err != nil {
		t.Errorf("stop without process: %v", err)
	}
}

// tapDevice creates a persistent TAP device and deletes it when the test
// ends.
func tapDevice(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("lmfc%05x", rand.IntN(1<<20))
	if out, err := exec.Command("ip", "tuntap", "add", "dev", name, "mode", "tap").CombinedOutput(); err != nil {
		t.Fatalf("ip tuntap add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", name).Run() })
	return name
}

// tapBusy reports whether TAP device name is attached to a process (a
// single-queue TAP takes one).
func tapBusy(t *testing.T, name string) bool {
	t.Helper()
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var ifr [unix.IFNAMSIZ + 64]byte
	copy(ifr[:unix.IFNAMSIZ-1], name)
	*(*uint16)(unsafe.Pointer(&ifr[unix.IFNAMSIZ])) = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&ifr[0])))
	return errno == unix.EBUSY
}

// The whole life of a VM against the stand-in firecracker: configure and
// boot over the API (every request checked), a second Start that starts
// nothing, the metadata service, the guest agent's vsock, pause and
// resume, and a graceful Stop.
func TestLifecycle(t *testing.T) {
	p := newProvider(t, Options{})
	vm := newVM(t, p)
	tap := tapDevice(t)
	vm.Nets = []vmm.NetDevice{{HostDevice: tap, GuestMAC: "02:aa:bb:cc:dd:01"}}
	vm.Metadata = map[string][]byte{"meta-data": []byte("instance-id: " + vm.UID + "\n"), "user-data": []byte("#cloud-config\nhostname: fc\n")}
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
	console := filepath.Join(vm.Dir, process.ConsoleFile)
	vmmtest.Eventually(t, 5*time.Second, "the boot on the console", func() bool { return vmmtest.FileContains(console, "fake-init: running") })
	if !vmmtest.FileContains(console, "Command line: "+kernelCmdline(vm.Cmdline)) {
		t.Error("the guest did not get the completed kernel command line")
	}

	// What Firecracker was told, request by request.
	d := vm.Dir
	vmmtest.CheckCalls(t, journal(t, filepath.Join(d, "fake-firecracker.journal")), []vmmtest.WantCall{
		{Method: "PUT", Path: "/metrics", Body: `{"metrics_path":"` + d + `/firecracker.metrics"}`},
		{Method: "PUT", Path: "/machine-config", Body: `{"vcpu_count":2,"mem_size_mib":256}`},
		{Method: "PUT", Path: "/boot-source", Body: `{"kernel_image_path":"` + d + `/kernel",
			"boot_args":"console=ttyS0 panic=1 reboot=k root=/dev/vda rw pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"}`},
		{Method: "PUT", Path: "/drives/root", Body: `{"drive_id":"root","path_on_host":"` + d + `/root.img","is_root_device":true,"is_read_only":false}`},
		{Method: "PUT", Path: "/drives/cidata", Body: `{"drive_id":"cidata","path_on_host":"` + d + `/cidata.img","is_root_device":false,"is_read_only":true}`},
		{Method: "PUT", Path: "/network-interfaces/eth0", Body: `{"iface_id":"eth0","host_dev_name":"` + tap + `","guest_mac":"02:aa:bb:cc:dd:01"}`},
		{Method: "PUT", Path: "/mmds/config", Body: `{"version":"V2","network_interfaces":["eth0"],"ipv4_address":"169.254.169.254"}`},
		{Method: "PUT", Path: "/mmds", Body: `{"latest":{"meta-data":"instance-id: ` + vm.UID + `\n","user-data":"#cloud-config\nhostname: fc\n"}}`},
		{Method: "PUT", Path: "/vsock", Body: `{"guest_cid":3,"uds_path":"` + d + `/vsock.sock"}`},
		{Method: "PUT", Path: "/actions", Body: `{"action_type":"InstanceStart"}`},
	})

	// Files: pid file, command line with the uid marker, the logger's and
	// metrics' files written by Firecracker, the config for operators.
	if got, err := process.ReadPidFile(filepath.Join(d, process.PidFile)); err != nil || got != pid {
		t.Errorf("pid file: %d, %v; want %d", got, err, pid)
	}
	if !vmmtest.FileContains(filepath.Join(d, process.CmdlineFile), "--id "+vm.UID) {
		t.Error("vmm.cmdline lacks the uid marker")
	}
	if !vmmtest.FileContains(filepath.Join(d, logName), "["+vm.UID+":INFO:") {
		t.Error("firecracker.log has no logger lines with level")
	}
	if !vmmtest.FileContains(filepath.Join(d, metricsName), `"utc_timestamp_ms"`) {
		t.Error("firecracker.metrics has no metrics")
	}
	if !vmmtest.FileContains(filepath.Join(d, process.ConfigFile), `"mmds-config"`) {
		t.Error("vmm.config.json lacks the mmds config")
	}
	if !tapBusy(t, tap) {
		t.Error("the VMM does not hold the TAP device")
	}

	// The data store as the API returns it.
	resp, err := process.Do(ctx, filepath.Join(d, apiSocket), "GET", "/mmds", nil, nil)
	if err != nil || resp.Status != 200 {
		t.Fatalf("GET /mmds: %+v, %v", resp, err)
	}
	if got, want := vmmtest.CanonJSON(t, resp.Body), vmmtest.CanonJSON(t, []byte(`{"latest":{"meta-data":"instance-id: `+vm.UID+`\n","user-data":"#cloud-config\nhostname: fc\n"}}`)); got != want {
		t.Errorf("mmds %s, want %s", got, want)
	}

	// The guest agent's socket forwards host connections.
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

	// Start again: the same process, no second one.
	st2, err := p.Start(ctx, vm)
	if err != nil || st2.Pid != pid || st2.State != vmm.StateRunning {
		t.Fatalf("second Start: %+v, %v; want running pid %d", st2, err, pid)
	}
	if n := vmmCount(t, p, vm.UID); n != 1 {
		t.Fatalf("%d vmm processes after two Starts", n)
	}

	// Pause and resume.
	if err := p.Pause(ctx, vm.UID, d); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Status(ctx, vm.UID, d); err != nil || st.State != vmm.StatePaused || st.Pid != pid {
		t.Fatalf("after Pause: %+v, %v", st, err)
	}
	if err := p.Resume(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Status(ctx, vm.UID, d); err != nil || st.State != vmm.StateRunning {
		t.Fatalf("after Resume: %+v, %v", st, err)
	}
	calls := journal(t, filepath.Join(d, "fake-firecracker.journal"))
	vmmtest.CheckCalls(t, calls[len(calls)-2:], []vmmtest.WantCall{
		{Method: "PATCH", Path: "/vm", Body: `{"state":"Paused"}`},
		{Method: "PATCH", Path: "/vm", Body: `{"state":"Resumed"}`},
	})

	ch, err := p.Wait(ctx, vm.UID, d)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
		t.Fatal("Wait channel closed while the VMM runs")
	default:
	}

	// Stop: the guest takes Ctrl-Alt-Del and reboots, which ends
	// Firecracker well before the timeout.
	start := time.Now()
	if err := p.Stop(ctx, vm.UID, d, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("graceful stop took %v", el)
	}
	select {
	case <-ch:
	default:
		t.Fatal("Wait channel open after Stop")
	}
	if _, err := process.State(pid); !errdefs.IsNotFound(err) {
		t.Errorf("firecracker %d still in the process table: %v", pid, err)
	}
	calls = journal(t, filepath.Join(d, "fake-firecracker.journal"))
	vmmtest.CheckCalls(t, calls[len(calls)-1:], []vmmtest.WantCall{{Method: "PUT", Path: "/actions", Body: `{"action_type":"SendCtrlAltDel"}`}})
	st, err = p.Status(ctx, vm.UID, d)
	if err != nil || st.State != vmm.StateExited {
		t.Fatalf("Status after Stop: %+v, %v", st, err)
	}
	for _, want := range []string{"reboot: Restarting system", "exit status 0"} {
		if !strings.Contains(st.Reason, want) {
			t.Errorf("reason %q lacks %q", st.Reason, want)
		}
	}
	if tapBusy(t, tap) {
		t.Error("the TAP device is still held after Stop")
	}

	// A new Start runs a new VMM; the console is appended to.
	st3, err := p.Start(ctx, vm)
	if err != nil || st3.State != vmm.StateRunning || st3.Pid == pid {
		t.Fatalf("restart: %+v, %v", st3, err)
	}
	b, err := os.ReadFile(console)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), process.StartNote); n != 2 {
		t.Errorf("console.log has %d start notes, want 2", n)
	}
}

// A guest that ignores Ctrl-Alt-Del: Stop waits the timeout, then
// Firecracker gets SIGTERM.
func TestStopEscalates(t *testing.T) {
	p := newProvider(t, Options{})
	vm := newVM(t, p)
	vm.Cmdline += " fake.ignore_ctrlaltdel"
	ctx := vmmtest.Ctx(t, time.Minute)
	if _, err := p.Start(ctx, vm); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.Stop(ctx, vm.UID, vm.Dir, 400*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 400*time.Millisecond {
		t.Errorf("stop took %v, less than its graceful timeout", el)
	}
	st, err := p.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st.State != vmm.StateExited {
		t.Fatalf("status: %+v, %v", st, err)
	}
	for _, want := range []string{"stop: quit", "signal: terminated"} {
		if !strings.Contains(st.Reason, want) {
			t.Errorf("reason %q lacks %q", st.Reason, want)
		}
	}
}

// StartPaused configures the VM but holds back InstanceStart until Resume.
func TestStartPaused(t *testing.T) {
	p := newProvider(t, Options{})
	vm := newVM(t, p)
	vm.StartPaused = true
	ctx := vmmtest.Ctx(t, time.Minute)
	st, err := p.Start(ctx, vm)
	if err != nil || st.State != vmm.StatePaused {
		t.Fatalf("Start paused: %+v, %v", st, err)
	}
	for _, c := range journal(t, filepath.Join(vm.Dir, "fake-firecracker.journal")) {
		if c.Path == "/actions" {
			t.Fatalf("an action before Resume: %s", c.Body)
		}
	}
	if vmmtest.FileContains(filepath.Join(vm.Dir, process.ConsoleFile), "Linux version") {
		t.Fatal("the guest booted before Resume")
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
}

// kill -9 of the VMM is seen by Wait and Status; a second provider (a
// restarted daemon) finds a running VMM by its pid file or, without it, by
// its command line, and controls it.
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
		t.Fatalf("second provider: %+v, %v; want running pid %d", st2, err, st.Pid)
	}
	if again, err := p2.Start(ctx, vm); err != nil || again.Pid != st.Pid {
		t.Fatalf("second provider's Start: %+v, %v", again, err)
	}
	if n := vmmCount(t, p2, vm.UID); n != 1 {
		t.Fatalf("%d processes", n)
	}
	if err := p2.Pause(ctx, vm.UID, vm.Dir); err != nil {
		t.Fatal(err)
	}
	if err := p2.Resume(ctx, vm); err != nil {
		t.Fatal(err)
	}
	ch2, err := p2.Wait(ctx, vm.UID, vm.Dir)
	if err != nil {
		t.Fatal(err)
	}
	ch1, err := p1.Wait(ctx, vm.UID, vm.Dir)
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
	st1, err := p1.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st1.State != vmm.StateExited || !strings.Contains(st1.Reason, "signal: killed") {
		t.Fatalf("Status after kill: %+v, %v", st1, err)
	}
	if st2, err := p2.Status(ctx, vm.UID, vm.Dir); err != nil || st2.State != vmm.StateExited {
		t.Fatalf("second provider's Status after kill: %+v, %v", st2, err)
	}
}

// The guest panics; with panic=1 it reboots, which ends Firecracker; the
// reason quotes the panic line.
func TestGuestPanic(t *testing.T) {
	p := newProvider(t, Options{})
	vm := newVM(t, p)
	vm.Cmdline += " fake.panic"
	ctx := vmmtest.Ctx(t, time.Minute)
	if _, err := p.Start(ctx, vm); err != nil {
		t.Fatal(err)
	}
	ch, err := p.Wait(ctx, vm.UID, vm.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if !vmmtest.Closed(ch, 5*time.Second) {
		t.Fatal("firecracker still runs after the guest's panic")
	}
	st, err := p.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st.State != vmm.StateExited || !strings.HasPrefix(st.Reason, "Kernel panic - not syncing: VFS") {
		t.Fatalf("status: %+v, %v", st, err)
	}
}

// TestGuestStateMapping: the instance states of GET / as the supervisor
// sees them, through the fake's API server; a state Firecracker's API does
// not list reads as a failed guest behind a live VMM.
func TestGuestStateMapping(t *testing.T) {
	for state, want := range map[string]vmm.State{
		"Running": vmm.StateRunning, "Paused": vmm.StatePaused, "Not started": vmm.StatePaused,
		"Crashed": vmm.StateFailed, "": vmm.StateFailed,
	} {
		if got := guestState(state); got.State != want || (want == vmm.StateFailed) != strings.Contains(got.Reason, "unknown instance state") {
			t.Errorf("state %q: %+v, want %s", state, got, want)
		}
	}
	p := newProvider(t, Options{})
	vm := newVM(t, p)
	vm.Cmdline += " fake.state=Crashed"
	ctx := vmmtest.Ctx(t, time.Minute)
	started, err := p.Start(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st.State != vmm.StateFailed || st.Pid != started.Pid || !strings.Contains(st.Reason, `"Crashed"`) {
		t.Fatalf("status: %+v, %v", st, err)
	}
}

// Firecracker's refusals come back from Start with its fault message, and
// leave no process behind.
func TestAPIErrors(t *testing.T) {
	p := newProvider(t, Options{})
	ctx := vmmtest.Ctx(t, time.Minute)

	vm := newVM(t, p)
	vm.Disks[0].Path = filepath.Join(vm.Dir, "missing.img")
	_, err := p.Start(ctx, vm)
	var apiErr *process.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 400 || apiErr.Path != "/drives/root" ||
		!strings.Contains(err.Error(), "PUT /drives/root: 400 Bad Request: Unable to create the virtio block device") ||
		!strings.Contains(err.Error(), "no such file or directory") {
		t.Fatalf("missing drive: %v", err)
	}
	if n := vmmCount(t, p, vm.UID); n != 0 {
		t.Fatalf("%d processes left after a failed start", n)
	}
	st, err := p.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st.State != vmm.StateExited || !strings.Contains(st.Reason, "start failed: ") {
		t.Fatalf("status after failed start: %+v, %v", st, err)
	}

	// A flag this Firecracker does not know: the process exits during
	// start and Start says why.
	bad := newProvider(t, Options{ExtraArgs: []string{"--no-such-flag"}})
	vm2 := newVM(t, bad)
	_, err = bad.Start(ctx, vm2)
	if err == nil || !strings.Contains(err.Error(), "vmm exited during start") || !strings.Contains(err.Error(), "--no-such-flag") {
		t.Fatalf("bad flag: %v", err)
	}
}

// Through the jailer: Firecracker runs as the jail's user in the chroot,
// with the VM's files hard-linked in; Stop removes the jail.
func TestJailer(t *testing.T) {
	base := filepath.Join(t.TempDir(), "jail")
	const uid, gid = 42421, 42422
	p := newProvider(t, Options{Jailer: &Jailer{Binary: filepath.Join(fakeBin, "jailer"), UID: uid, GID: gid, ChrootBase: base}})
	vm := newVM(t, p)
	vm.GuestAgent = true
	ctx := vmmtest.Ctx(t, time.Minute)
	st, err := p.Start(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(base, "firecracker", vm.UID, "root")
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", st.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), fmt.Sprintf("\nUid:\t%d\t", uid)) {
		t.Errorf("firecracker does not run as uid %d:\n%s", uid, status)
	}
	if link, err := os.Readlink(fmt.Sprintf("/proc/%d/root", st.Pid)); err != nil || link != root {
		t.Errorf("firecracker's root is %q (%v), want %q", link, err, root)
	}
	argv, err := process.Cmdline(st.Pid)
	if err != nil || argv[0] != "/firecracker" || p.argvUID(argv) != vm.UID {
		t.Errorf("jailed argv %q, %v", argv, err)
	}
	// Files are the VM's own, hard-linked.
	for in, out := range map[string]string{vm.Disks[0].Path: "drive0.img", vm.KernelPath: "vmlinux", filepath.Join(vm.Dir, logName): "firecracker.log"} {
		a, err1 := os.Stat(in)
		b, err2 := os.Stat(filepath.Join(root, out))
		if err1 != nil || err2 != nil || !os.SameFile(a, b) {
			t.Errorf("%s is not %s in the jail: %v %v", out, in, err1, err2)
		}
	}
	vmmtest.CheckCalls(t, journal(t, filepath.Join(root, "run", "fake-firecracker.journal")), []vmmtest.WantCall{
		{Method: "PUT", Path: "/metrics", Body: `{"metrics_path":"/firecracker.metrics"}`},
		{Method: "PUT", Path: "/machine-config", Body: `{"vcpu_count":2,"mem_size_mib":256}`},
		{Method: "PUT", Path: "/boot-source", Body: `{"kernel_image_path":"/vmlinux",
			"boot_args":"console=ttyS0 panic=1 reboot=k root=/dev/vda rw pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"}`},
		{Method: "PUT", Path: "/drives/root", Body: `{"drive_id":"root","path_on_host":"/drive0.img","is_root_device":true,"is_read_only":false}`},
		{Method: "PUT", Path: "/drives/cidata", Body: `{"drive_id":"cidata","path_on_host":"/drive1.img","is_root_device":false,"is_read_only":true}`},
		{Method: "PUT", Path: "/vsock", Body: `{"guest_cid":3,"uds_path":"/run/vsock.sock"}`},
		{Method: "PUT", Path: "/actions", Body: `{"action_type":"InstanceStart"}`},
	})
	vmmtest.Eventually(t, 5*time.Second, "the boot on the console", func() bool {
		return vmmtest.FileContains(filepath.Join(vm.Dir, process.ConsoleFile), "fake-init: running")
	})
	if !vmmtest.FileContains(filepath.Join(vm.Dir, logName), "Running Firecracker") {
		t.Error("the jailed logger does not write to the VM folder's firecracker.log")
	}
	// The host reaches the guest agent through the VM folder.
	conn, err := net.Dial("unix", filepath.Join(vm.Dir, vmm.GuestAgentSocket))
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()

	// A second provider finds the jailed VMM.
	p2 := newProvider(t, Options{Jailer: p.opts.Jailer})
	if st2, err := p2.Status(ctx, vm.UID, vm.Dir); err != nil || st2.Pid != st.Pid || st2.State != vmm.StateRunning {
		t.Fatalf("second provider: %+v, %v", st2, err)
	}
	if err := p2.Stop(ctx, vm.UID, vm.Dir, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(base, "firecracker", vm.UID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail left after Stop: %v", err)
	}
	if _, err := os.Stat(vm.Disks[0].Path); err != nil {
		t.Errorf("the volume went with the jail: %v", err)
	}
	if fi, err := os.Stat(vm.Disks[0].Path); err == nil {
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid {
			t.Errorf("volume owner %d, want the jail's %d", st.Uid, uid)
		}
	}
}

// A VM folder whose socket paths do not fit in a socket address: the VMM
// gets them relative to its working directory (the folder), and the
// provider still reaches them.
func TestLongFolder(t *testing.T) {
	p := newProvider(t, Options{})
	vm := newVM(t, p)
	long := filepath.Join(vm.Dir, strings.Repeat("n", 60), strings.Repeat("m", 60))
	if err := os.MkdirAll(long, 0o755); err != nil {
		t.Fatal(err)
	}
	vm.Dir = long
	vm.GuestAgent = true
	t.Cleanup(func() { _ = p.Stop(vmmtest.Ctx(t, 10*time.Second), vm.UID, long, 0) })
	ctx := vmmtest.Ctx(t, time.Minute)
	st, err := p.Start(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	argv, err := process.Cmdline(st.Pid)
	if err != nil || !strings.Contains(strings.Join(argv, " "), "--api-sock "+apiSocket+" ") {
		t.Fatalf("argv %q, %v: want a relative API socket", argv, err)
	}
	if st, err := p.Status(ctx, vm.UID, long); err != nil || st.State != vmm.StateRunning {
		t.Fatalf("status: %+v, %v", st, err)
	}
	calls := journal(t, filepath.Join(long, "fake-firecracker.journal"))
	for _, c := range calls {
		if c.Path == "/vsock" && vmmtest.CanonJSON(t, c.Body) != `{"guest_cid":3,"uds_path":"vsock.sock"}` {
			t.Errorf("vsock %s", c.Body)
		}
	}
}

// Metadata larger than Firecracker's default request and data store
// limits (51200 bytes) raises both on the command line.
func TestLargeMetadata(t *testing.T) {
	p := newProvider(t, Options{})
	vm := newVM(t, p)
	vm.Nets = []vmm.NetDevice{{HostDevice: tapDevice(t)}}
	big := "#cloud-config\nwrite_files:\n- path: /big\n  content: " + strings.Repeat("x", 70000) + "\n"
	vm.Metadata = map[string][]byte{"meta-data": []byte("instance-id: i\n"), "user-data": []byte(big)}
	ctx := vmmtest.Ctx(t, time.Minute)
	if _, err := p.Start(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if !vmmtest.FileContains(filepath.Join(vm.Dir, process.CmdlineFile), "--mmds-size-limit") {
		t.Error("no --mmds-size-limit on the command line")
	}
	resp, err := process.Do(ctx, filepath.Join(vm.Dir, apiSocket), "GET", "/mmds", nil, nil)
	if err != nil || resp.Status != 200 || !strings.Contains(string(resp.Body), strings.Repeat("x", 70000)) {
		t.Fatalf("GET /mmds: %d, %v", resp.Status, err)
	}
}
