package qemu

import (
	"context"
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
	if _, err := New(Options{Accel: "hvf"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("accel hvf: %v, want invalid argument", err)
	}
	if _, err := New(Options{Binary: "no-such-qemu-binary"}); err == nil {
		t.Error("a missing binary was accepted")
	}
	p, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Name() != "qemu" || p.opts.Accel != AccelAuto || !filepath.IsAbs(p.binary) {
		t.Errorf("defaults: name %q accel %q binary %q", p.Name(), p.opts.Accel, p.binary)
	}
	// This host has QEMU's virtiofsd (qemu-system-common).
	if c := p.Capabilities(); !c.NoCloudDisk || !c.VirtioFS || !c.MacVTap || c.UncompressedKernel {
		t.Errorf("capabilities %+v", c)
	}
}

func TestStartValidates(t *testing.T) {
	p, _ := newProvider(t, Options{})
	good := vmm.VM{UID: "U", Dir: t.TempDir(), VCPU: 1, MemoryMB: 64, KernelPath: "/k"}
	for name, edit := range map[string]func(*vmm.VM){
		"uid":      func(vm *vmm.VM) { vm.UID = "a/b" },
		"dir":      func(vm *vmm.VM) { vm.Dir = "rel" },
		"vcpu":     func(vm *vmm.VM) { vm.VCPU = 0 },
		"memory":   func(vm *vmm.VM) { vm.MemoryMB = 1 },
		"kernel":   func(vm *vmm.VM) { vm.KernelPath = "" },
		"format":   func(vm *vmm.VM) { vm.Disks = []vmm.Disk{{Path: "/d", Format: "vmdk"}} },
		"disk":     func(vm *vmm.VM) { vm.Disks = []vmm.Disk{{ID: "x"}} },
		"macvtap":  func(vm *vmm.VM) { vm.Nets = []vmm.NetDevice{{MacVTap: true, HostDevice: "m"}} },
		"tap name": func(vm *vmm.VM) { vm.Nets = []vmm.NetDevice{{}} },
	} {
		vm := good
		edit(&vm)
		if _, err := p.Start(vmmtest.Ctx(t, 5*time.Second), vm); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
	}
	// Status of a folder where nothing was started.
	st, err := p.Status(vmmtest.Ctx(t, 5*time.Second), "U", good.Dir)
	if err != nil || st.State != vmm.StateNotStarted {
		t.Errorf("status before start: %+v, %v", st, err)
	}
	ch, err := p.Wait(vmmtest.Ctx(t, 5*time.Second), "U", good.Dir)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Error("Wait channel of a VM without process is open")
	}
	if err := p.Resume(vmmtest.Ctx(t, 5*time.Second), good); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("resume without process: %v", err)
	}
}

// On this host KVM exists but does not boot stock kernels (PVM), so the
// probe must choose TCG and say why; on a host where KVM works it must
// choose KVM and a KVM guest must really boot.
func TestAccelProbe(t *testing.T) {
	a := guest(t)
	p, logs := newProvider(t, Options{Accel: AccelAuto, ProbeTimeout: 2 * time.Second})
	ctx := vmmtest.Ctx(t, time.Minute)

	start := time.Now()
	choice, err := p.Accel(ctx, a.Vmlinuz)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("probe chose %s in %v: %s", choice.Accel, time.Since(start), choice.Reason)
	if choice.Reason == "" {
		t.Fatal("no reason")
	}
	logged := logs.String()
	if strings.Count(logged, "qemu acceleration chosen") != 1 || !strings.Contains(logged, "accel="+choice.Accel) ||
		!strings.Contains(logged, strconv.Quote(choice.Reason)) {
		t.Fatalf("decision not logged once with its reason:\n%s", logged)
	}

	// Cached per kernel file: no second probe, no second log line.
	start = time.Now()
	again, err := p.Accel(ctx, a.Vmlinuz)
	if err != nil || again != choice {
		t.Fatalf("second call: %+v, %v", again, err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("cached answer took %v", d)
	}
	if n := strings.Count(logs.String(), "qemu acceleration chosen"); n != 1 {
		t.Errorf("decision logged %d times", n)
	}

	// Check the decision independently: boot the kernel under KVM through
	// the provider and watch for the banner for twice the probe time.
	kvm, _ := newProvider(t, Options{Accel: AccelKVM})
	vm := newVM(t, kvm)
	vm.InitrdPath = ""
	kvmBooted := false
	if _, err := os.Stat("/dev/kvm"); err == nil {
		if _, err := kvm.Start(ctx, vm); err != nil {
			t.Fatalf("start under kvm: %v", err)
		}
		deadline := time.Now().Add(4 * time.Second)
		for time.Now().Before(deadline) && !kvmBooted {
			kvmBooted = vmmtest.FileContains(filepath.Join(vm.Dir, process.ConsoleFile), kernelBanner)
			time.Sleep(50 * time.Millisecond)
		}
	}
	switch {
	case kvmBooted && choice.Accel != AccelKVM:
		t.Fatalf("KVM boots this kernel but the probe chose %s (%s)", choice.Accel, choice.Reason)
	case !kvmBooted && choice.Accel != AccelTCG:
		t.Fatalf("KVM does not boot this kernel but the probe chose %s", choice.Accel)
	case choice.Accel == AccelTCG && !strings.Contains(choice.Reason, "kvm"):
		t.Fatalf("TCG reason does not explain the KVM failure: %q", choice.Reason)
	}

	// A VM started with auto gets the decision.
	auto := newVM(t, p)
	auto.StartPaused = true
	if _, err := p.Start(ctx, auto); err != nil {
		t.Fatal(err)
	}
	if !vmmtest.FileContains(filepath.Join(auto.Dir, process.CmdlineFile), "microvm,accel="+choice.Accel) {
		t.Errorf("vmm.cmdline does not use accel %s", choice.Accel)
	}
}

func TestLifecycle(t *testing.T) {
	p, logs := newProvider(t, Options{})
	vm := newVM(t, p)
	ctx := vmmtest.Ctx(t, 2*time.Minute)

	st, err := p.Start(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != vmm.StateRunning || st.Pid <= 0 {
		t.Fatalf("after Start: %+v", st)
	}
	pid := st.Pid
	console := filepath.Join(vm.Dir, process.ConsoleFile)
	vmmtest.Eventually(t, 30*time.Second, "the kernel banner on the console", func() bool { return vmmtest.FileContains(console, kernelBanner) })

	// QEMU wrote its pid file; the operator's command line carries the uid.
	if got, err := process.ReadPidFile(filepath.Join(vm.Dir, process.PidFile)); err != nil || got != pid {
		t.Errorf("pid file: %d, %v; want %d", got, err, pid)
	}
	if !vmmtest.FileContains(filepath.Join(vm.Dir, process.CmdlineFile), "guest="+vm.UID) {
		t.Error("vmm.cmdline lacks the uid marker")
	}

	// Start again: the same process, no second one.
	st2, err := p.Start(ctx, vm)
	if err != nil || st2.Pid != pid || st2.State != vmm.StateRunning {
		t.Fatalf("second Start: %+v, %v; want running pid %d", st2, err, pid)
	}
	if n := vmmCount(t, p, vm.UID); n != 1 {
		t.Fatalf("%d vmm processes after two Starts", n)
	}
	if st, err := p.Status(ctx, vm.UID, vm.Dir); err != nil || st.State != vmm.StateRunning || st.Pid != pid {
		t.Fatalf("Status: %+v, %v", st, err)
	}

	ch, err := p.Wait(ctx, vm.UID, vm.Dir)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
		t.Fatal("Wait channel closed while the VMM runs")
	default:
	}

	// The busybox guest ignores the ACPI power button: Stop falls back to
	// QMP quit after the timeout.
	start := time.Now()
	if err := p.Stop(ctx, vm.UID, vm.Dir, 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Errorf("stop took %v, less than its graceful timeout", d)
	}
	if strings.Contains(logs.String(), "powerdown failed") {
		t.Error("QMP refused system_powerdown")
	}
	select {
	case <-ch:
	default:
		t.Fatal("Wait channel open after Stop")
	}
	if _, err := process.State(pid); !errdefs.IsNotFound(err) {
		t.Errorf("qemu %d still in the process table (zombie?): %v", pid, err)
	}
	st, err = p.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st.State != vmm.StateExited {
		t.Fatalf("Status after Stop: %+v, %v", st, err)
	}
	for _, want := range []string{"stop: quit", "exit status 0"} {
		if !strings.Contains(st.Reason, want) {
			t.Errorf("reason %q lacks %q", st.Reason, want)
		}
	}
	// Stop is idempotent.
	if err := p.Stop(ctx, vm.UID, vm.Dir, time.Second); err != nil {
		t.Fatal(err)
	}

	// A new Start after an exit runs a new VMM, and the console is appended.
	st3, err := p.Start(ctx, vm)
	if err != nil || st3.State != vmm.StateRunning || st3.Pid == pid {
		t.Fatalf("restart: %+v, %v", st3, err)
	}
	b, err := os.ReadFile(console)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), process.StartNote); n != 2 {
		t.Errorf("console.log has %d start notes, want 2 (appended)", n)
	}
}

func TestStartPausedResume(t *testing.T) {
	p, _ := newProvider(t, Options{})
	vm := newVM(t, p)
	vm.StartPaused = true
	ctx := vmmtest.Ctx(t, 2*time.Minute)

	st, err := p.Start(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != vmm.StatePaused || st.Reason != "" {
		t.Fatalf("after paused Start: %+v", st)
	}
	console := filepath.Join(vm.Dir, process.ConsoleFile)
	time.Sleep(300 * time.Millisecond) // a running TCG guest prints its banner by now
	if vmmtest.FileContains(console, kernelBanner) {
		t.Fatal("the paused guest ran")
	}
	if st, err := p.Status(ctx, vm.UID, vm.Dir); err != nil || st.State != vmm.StatePaused {
		t.Fatalf("Status: %+v, %v", st, err)
	}
	// Start of a paused VM changes nothing.
	if st2, err := p.Start(ctx, vm); err != nil || st2.Pid != st.Pid || st2.State != vmm.StatePaused {
		t.Fatalf("second Start: %+v, %v", st2, err)
	}

	for range 2 { // Resume is idempotent
		if err := p.Resume(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := p.Status(ctx, vm.UID, vm.Dir); err != nil || st.State != vmm.StateRunning {
		t.Fatalf("Status after Resume: %+v, %v", st, err)
	}
	vmmtest.Eventually(t, 30*time.Second, "the kernel banner", func() bool { return vmmtest.FileContains(console, kernelBanner) })
}

func TestKilledVMM(t *testing.T) {
	p, _ := newProvider(t, Options{})
	vm := newVM(t, p)
	vm.StartPaused = true
	ctx := vmmtest.Ctx(t, time.Minute)
	st, err := p.Start(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := p.Wait(ctx, vm.UID, vm.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(st.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !vmmtest.Closed(ch, 10*time.Second) {
		t.Fatal("Wait channel still open 10s after kill -9")
	}
	st, err = p.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st.State != vmm.StateExited || !strings.Contains(st.Reason, "signal: killed") {
		t.Fatalf("Status after kill -9: %+v, %v", st, err)
	}
	if err := p.Resume(ctx, vm); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Resume of an exited VM: %v", err)
	}
}

// A second provider stands for flintlockd after a restart: it finds the VMM
// the first one started (also without its pid file), does not start a
// second one, waits on it and stops it.
func TestRestartedDaemon(t *testing.T) {
	p1, _ := newProvider(t, Options{})
	vm := newVM(t, p1)
	ctx := vmmtest.Ctx(t, 2*time.Minute)
	st, err := p1.Start(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}

	p2, _ := newProvider(t, Options{})
	st2, err := p2.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st2.State != vmm.StateRunning || st2.Pid != st.Pid {
		t.Fatalf("second provider's Status: %+v, %v; want running pid %d", st2, err, st.Pid)
	}
	// As if the old daemon was killed before QEMU wrote its pid file.
	if err := os.Remove(filepath.Join(vm.Dir, process.PidFile)); err != nil {
		t.Fatal(err)
	}
	st3, err := p2.Start(ctx, vm)
	if err != nil || st3.Pid != st.Pid {
		t.Fatalf("second provider's Start: %+v, %v; want pid %d", st3, err, st.Pid)
	}
	if n := vmmCount(t, p2, vm.UID); n != 1 {
		t.Fatalf("%d vmm processes", n)
	}
	ch, err := p2.Wait(ctx, vm.UID, vm.Dir)
	if err != nil {
		t.Fatal(err)
	}
	ch2, _ := p2.Wait(ctx, vm.UID, vm.Dir)
	if ch != ch2 {
		t.Error("Wait callers do not share one watcher")
	}
	if vmmtest.Closed(ch, 100*time.Millisecond) {
		t.Fatal("Wait channel closed while the VMM runs")
	}
	if err := p2.Stop(ctx, vm.UID, vm.Dir, 0); err != nil {
		t.Fatal(err)
	}
	if !vmmtest.Closed(ch, 5*time.Second) {
		t.Fatal("Wait channel of the second provider still open after Stop")
	}
	st4, err := p2.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st4.State != vmm.StateExited || !strings.Contains(st4.Reason, "stop: quit") {
		t.Fatalf("Status after Stop: %+v, %v", st4, err)
	}
}

func TestGuestPanic(t *testing.T) {
	p, _ := newProvider(t, Options{})
	vm := newVM(t, p)
	vm.InitrdPath = ""
	vm.Cmdline = "root=/dev/nonexistent"
	ctx := vmmtest.Ctx(t, 2*time.Minute)
	if _, err := p.Start(ctx, vm); err != nil {
		t.Fatal(err)
	}
	ch, err := p.Wait(ctx, vm.UID, vm.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if !vmmtest.Closed(ch, 60*time.Second) {
		t.Fatal("the panicking guest's VMM did not exit")
	}
	st, err := p.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st.State != vmm.StateExited {
		t.Fatalf("Status: %+v, %v", st, err)
	}
	if !strings.HasPrefix(st.Reason, "Kernel panic - not syncing") {
		t.Fatalf("reason %q does not start with the panic line", st.Reason)
	}
	t.Logf("reason: %s", st.Reason)
}

// QEMU refusing its command line fails Start with QEMU's message, and the
// VM reads as exited with that reason.
func TestStartFailure(t *testing.T) {
	p, _ := newProvider(t, Options{})
	vm := newVM(t, p)
	vm.Disks = []vmm.Disk{{ID: "root", Path: filepath.Join(vm.Dir, "missing.img")}}
	ctx := vmmtest.Ctx(t, time.Minute)
	_, err := p.Start(ctx, vm)
	if err == nil || !strings.Contains(err.Error(), "missing.img") {
		t.Fatalf("Start with a missing disk: %v", err)
	}
	st, err := p.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st.State != vmm.StateExited || !strings.Contains(st.Reason, "missing.img") {
		t.Fatalf("Status: %+v, %v", st, err)
	}
	if n := vmmCount(t, p, vm.UID); n != 0 {
		t.Fatalf("%d processes after a failed start", n)
	}
}

// A cancelled Stop still ends the VMM, forcibly.
func TestStopCancelled(t *testing.T) {
	p, _ := newProvider(t, Options{})
	vm := newVM(t, p)
	vm.StartPaused = true
	ctx := vmmtest.Ctx(t, time.Minute)
	st, err := p.Start(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	start := time.Now()
	if err := p.Stop(cctx, vm.UID, vm.Dir, time.Minute); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancelled Stop took %v", d)
	}
	if process.Running(st.Pid) {
		t.Fatal("VMM still runs after a cancelled Stop")
	}
	st, _ = p.Status(ctx, vm.UID, vm.Dir)
	if !strings.Contains(st.Reason, "SIGKILL") {
		t.Errorf("reason %q does not say SIGKILL", st.Reason)
	}
}

// Concurrent Starts of one VM start one VMM.
func TestConcurrentStart(t *testing.T) {
	p, _ := newProvider(t, Options{})
	vm := newVM(t, p)
	vm.StartPaused = true
	ctx := vmmtest.Ctx(t, time.Minute)
	pids := make(chan int, 4)
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			st, err := p.Start(ctx, vm)
			errs <- err
			pids <- st.Pid
		}()
	}
	first := 0
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		pid := <-pids
		if first == 0 {
			first = pid
		}
		if pid != first || pid == 0 {
			t.Fatalf("Starts returned pids %d and %d", first, pid)
		}
	}
	if n := vmmCount(t, p, vm.UID); n != 1 {
		t.Fatalf("%d vmm processes", n)
	}
}
