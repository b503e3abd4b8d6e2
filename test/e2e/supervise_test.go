package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// Supervision: guest panics, restart policies and the unprivileged VMM
// user, with real guests under QEMU.

// panicDeadline is how soon a panic must show as FAILED.
const panicDeadline = 5 * time.Second

// withUserData replaces the spec's user-data with a shell script.
func withUserData(s *types.MicroVMSpec, script string) *types.MicroVMSpec {
	s.Metadata["user-data"] = base64.StdEncoding.EncodeToString([]byte("#!/bin/sh\n" + script))
	return s
}

// panicScript prints marker, then crashes the guest kernel.
func panicScript(marker string) string {
	return "echo " + marker + "\nsleep 1\necho c >/proc/sysrq-trigger\n"
}

func (d *daemon) get(uid string) *types.MicroVM {
	d.t.Helper()
	resp, err := d.Client.GetMicroVM(context.Background(), &v1alpha1.GetMicroVMRequest{Uid: uid})
	if err != nil {
		d.t.Fatal(err)
	}
	return resp.GetMicrovm()
}

func (d *daemon) create(s *types.MicroVMSpec) string {
	d.t.Helper()
	resp, err := d.Client.CreateMicroVM(context.Background(), &v1alpha1.CreateMicroVMRequest{Microvm: s})
	if err != nil {
		d.t.Fatal(err)
	}
	return resp.GetMicrovm().GetSpec().GetUid()
}

func (d *daemon) deleteVM(vm *types.MicroVM) {
	d.t.Helper()
	if _, err := d.Client.DeleteMicroVM(context.Background(), &v1alpha1.DeleteMicroVMRequest{Uid: vm.GetSpec().GetUid()}); err != nil {
		d.t.Fatal(err)
	}
	d.waitGone(vm.GetSpec().GetUid(), time.Minute)
	d.assertNothingLeft(vm)
}

// waitFailedAfterPanic watches the console (from the host's clock) for the
// panic line and the VM's state, and returns the FAILED VM and how long
// after the panic line appeared it turned FAILED.
func (d *daemon) waitFailedAfterPanic(vm *types.MicroVM, timeout time.Duration) (*types.MicroVM, time.Duration) {
	d.t.Helper()
	uid := vm.GetSpec().GetUid()
	console := filepath.Join(d.vmDir(vm), "console.log")
	var panicked time.Time
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if panicked.IsZero() {
			if b, _ := os.ReadFile(console); strings.Contains(string(b), "Kernel panic - not syncing") {
				panicked = time.Now()
			}
		}
		got := d.get(uid)
		if got.GetStatus().GetState() == types.MicroVMStatus_FAILED {
			if panicked.IsZero() {
				d.t.Fatalf("FAILED before the panic was seen on the console: %v", got.GetStatus())
			}
			return got, time.Since(panicked)
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := os.ReadFile(console)
	d.t.Fatalf("not FAILED after %v (panic seen: %v); console:\n%s\ndaemon:\n%s", timeout, !panicked.IsZero(), tail(string(b), 30), d.LogTail(40))
	return nil, 0
}

// waitRestarts waits until the VM is CREATED with restart_count n.
func (d *daemon) waitRestarts(uid string, n int32, timeout time.Duration) *types.MicroVM {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	var vm *types.MicroVM
	for time.Now().Before(deadline) {
		vm = d.get(uid)
		st := vm.GetStatus()
		if st.GetState() == types.MicroVMStatus_FAILED {
			d.t.Fatalf("FAILED while waiting for restart %d: %s: %s", n, st.GetFailureReason(), st.GetFailureMessage())
		}
		if st.GetRestartCount() >= n && st.GetState() == types.MicroVMStatus_CREATED && st.GetVmmPid() != 0 {
			return vm
		}
		time.Sleep(100 * time.Millisecond)
	}
	d.t.Fatalf("restart_count %d (want %d) after %v: %v\ndaemon:\n%s", vm.GetStatus().GetRestartCount(), n, timeout, vm.GetStatus(), d.LogTail(40))
	return nil
}

// TestGuestPanicFails: a guest that panics is FAILED with the panic line
// within 5 s, both when QEMU exits after the panic (panic=1, the default)
// and when the guest hangs in it with QEMU still running (panic=0: only
// the console watch sees it).
func TestGuestPanicFails(t *testing.T) {
	d := startDaemon(t, "--resync-period=1h")
	for _, tc := range []struct {
		name    string
		cmdline map[string]string
	}{
		{"exits", nil},
		{"hangs", map[string]string{"panic": "0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := withUserData(spec("panic-"+tc.name, ""), panicScript("about-to-panic"))
			s.Kernel.Cmdline = tc.cmdline
			uid := d.create(s)
			vm := d.waitState(uid, types.MicroVMStatus_CREATED, 2*time.Minute)
			vm, elapsed := d.waitFailedAfterPanic(vm, bootTimeout)
			st := vm.GetStatus()
			t.Logf("FAILED %v after the panic: %s: %s", elapsed.Round(time.Millisecond), st.GetFailureReason(), st.GetFailureMessage())
			if elapsed > panicDeadline {
				t.Errorf("FAILED %v after the panic, more than %v", elapsed, panicDeadline)
			}
			if st.GetFailureReason() != "GuestPanic" || !strings.HasPrefix(st.GetFailureMessage(), "Kernel panic - not syncing: sysrq triggered crash") {
				t.Errorf("reason %q message %q; want GuestPanic quoting the panic line", st.GetFailureReason(), st.GetFailureMessage())
			}
			if pids := vmmProcesses(uid); len(pids) != 0 {
				t.Errorf("the panicked guest's VMM still runs: %v", pids)
			}
			d.deleteVM(vm)
		})
	}
}

// metric returns the value of the sample named (with labels) as given in
// the daemon's /metrics, "" when absent.
func (d *daemon) metric(sample string) string {
	d.t.Helper()
	resp, err := http.Get("http://" + d.MetricsAddr + "/metrics")
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			return v
		}
	}
	return ""
}

// TestRestartOnFailure: with on-failure and a limit of 2, a guest that
// panics on every boot is restarted twice (same folder and volume, a new
// VMM each time, counted in the status and the metrics), then FAILED.
func TestRestartOnFailure(t *testing.T) {
	d := startDaemon(t, "--resync-period=1h")
	s := withUserData(spec("onfailure", ""), panicScript("booted-and-panicking"))
	s.RestartPolicy, s.MaxRestarts = "on-failure", 2
	uid := d.create(s)
	vm := d.waitState(uid, types.MicroVMStatus_CREATED, 2*time.Minute)
	root := vm.GetStatus().GetVolumes()["root"].GetMount().GetSource()
	before, err := os.Stat(root)
	if err != nil {
		t.Fatal(err)
	}
	pids := map[int32]bool{vm.GetStatus().GetVmmPid(): true}
	for n := int32(1); n <= 2; n++ {
		vm = d.waitRestarts(uid, n, bootTimeout)
		pid := vm.GetStatus().GetVmmPid()
		if pids[pid] {
			t.Fatalf("restart %d kept VMM pid %d", n, pid)
		}
		pids[pid] = true
		after, err := os.Stat(root)
		if err != nil || !os.SameFile(before, after) {
			t.Fatalf("restart %d: the root volume was replaced (%v)", n, err)
		}
	}
	vm = d.waitState(uid, types.MicroVMStatus_FAILED, bootTimeout)
	st := vm.GetStatus()
	t.Logf("FAILED: %s: %s", st.GetFailureReason(), st.GetFailureMessage())
	if st.GetRestartCount() != 2 || st.GetFailureReason() != "GuestPanic" || !strings.Contains(st.GetFailureMessage(), "restarted 2 times") {
		t.Fatalf("after the limit: restarts %d, %s: %s", st.GetRestartCount(), st.GetFailureReason(), st.GetFailureMessage())
	}
	console, _ := os.ReadFile(filepath.Join(d.vmDir(vm), "console.log"))
	if n := strings.Count(string(console), "LIQUIDMETAL-GUEST: booted"); n != 3 {
		t.Errorf("the guest booted %d times, want 3", n)
	}
	if v := d.metric(`flintlockd_microvm_restarts_total{reason="GuestPanic"}`); v != "2" {
		t.Errorf("restart counter %q, want 2", v)
	}
	d.deleteVM(vm)
}

// TestRestartAlways: always restarts a guest that powered itself off
// (which on-failure would not); a kill -9 of the VMM under on-failure is
// restarted too.
func TestRestartAlways(t *testing.T) {
	d := startDaemon(t, "--resync-period=1h")
	t.Run("power-off", func(t *testing.T) {
		s := withUserData(spec("always", ""), "echo powering-off\npoweroff -f\n")
		s.RestartPolicy, s.MaxRestarts = "always", 1
		uid := d.create(s)
		d.waitState(uid, types.MicroVMStatus_CREATED, 2*time.Minute)
		d.waitRestarts(uid, 1, bootTimeout)
		vm := d.waitState(uid, types.MicroVMStatus_FAILED, bootTimeout)
		st := vm.GetStatus()
		if st.GetRestartCount() != 1 || st.GetFailureReason() != "VMMExited" || !strings.Contains(st.GetFailureMessage(), "Power down") {
			t.Fatalf("after the limit: restarts %d, %s: %s", st.GetRestartCount(), st.GetFailureReason(), st.GetFailureMessage())
		}
		d.deleteVM(vm)
	})
	t.Run("kill", func(t *testing.T) {
		marker := fmt.Sprintf("marker-kill-%d", time.Now().UnixNano())
		s := spec("killed", marker)
		s.RestartPolicy = "on-failure"
		uid := d.create(s)
		vm := d.waitState(uid, types.MicroVMStatus_CREATED, 2*time.Minute)
		d.waitConsole(vm, marker, bootTimeout)
		pid := vm.GetStatus().GetVmmPid()
		if err := syscall.Kill(int(pid), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		vm = d.waitRestarts(uid, 1, bootTimeout)
		if vm.GetStatus().GetVmmPid() == pid {
			t.Fatal("the VMM pid did not change")
		}
		if got := vmmProcesses(uid); len(got) != 1 {
			t.Fatalf("want one VMM process, got %v", got)
		}
		// The restarted guest boots again and runs its user-data again.
		path := filepath.Join(d.vmDir(vm), "console.log")
		deadline := time.Now().Add(bootTimeout)
		for {
			b, _ := os.ReadFile(path)
			if strings.Count(string(b), marker) >= 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the restarted guest did not boot:\n%s", tail(string(b), 30))
			}
			time.Sleep(200 * time.Millisecond)
		}
		d.deleteVM(vm)
	})
}

// TestVMMUser: with --vmm-user the VM's QEMU runs as that uid and gid,
// and the guest boots from its root volume and runs its user-data.
func TestVMMUser(t *testing.T) {
	d := startDaemon(t, "--vmm-user=64123:64123")
	marker := fmt.Sprintf("marker-user-%d", time.Now().UnixNano())
	uid := d.create(spec("unprivileged", marker))
	vm := d.waitState(uid, types.MicroVMStatus_CREATED, 2*time.Minute)
	d.waitConsole(vm, marker, bootTimeout)
	pid := vm.GetStatus().GetVmmPid()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Uid:"); ok {
			ids = append(ids, strings.Fields(v)...)
		}
		if v, ok := strings.CutPrefix(l, "Gid:"); ok {
			ids = append(ids, strings.Fields(v)...)
		}
	}
	for _, id := range ids {
		if id != "64123" {
			t.Fatalf("QEMU %d runs with ids %v, want 64123 throughout", pid, ids)
		}
	}
	if len(ids) != 8 {
		t.Fatalf("read ids %v", ids)
	}
	d.deleteVM(vm)
}
