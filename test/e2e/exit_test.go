package e2e

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// TestVMMKilledTurnsFailed: a VM whose VMM process is killed with SIGKILL
// turns FAILED with a reason, through the exit watch alone (the resync is an
// hour away), and still deletes cleanly.
func TestVMMKilledTurnsFailed(t *testing.T) {
	d := startDaemon(t, "--resync-period=1h")
	ctx := context.Background()
	resp, err := d.Client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec("exit", "marker-exit")})
	if err != nil {
		t.Fatal(err)
	}
	uid := resp.GetMicrovm().GetSpec().GetUid()
	vm := d.waitState(uid, types.MicroVMStatus_CREATED, 2*time.Minute)
	pids := vmmProcesses(uid)
	if len(pids) != 1 {
		t.Fatalf("want one VMM process, got %v", pids)
	}
	if got := vm.GetStatus().GetVmmPid(); got != 0 && int(got) != pids[0] {
		t.Fatalf("status names VMM pid %d, process is %d", got, pids[0])
	}
	killed := time.Now()
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	vm = d.waitState(uid, types.MicroVMStatus_FAILED, 30*time.Second)
	t.Logf("FAILED %v after the kill: %s: %s", time.Since(killed).Round(time.Millisecond), vm.GetStatus().GetFailureReason(), vm.GetStatus().GetFailureMessage())
	st := vm.GetStatus()
	if st.GetFailureReason() != "VMMExited" || !strings.Contains(st.GetFailureMessage(), "killed") {
		t.Fatalf("want a failure reason naming the exit, got reason %q message %q", st.GetFailureReason(), st.GetFailureMessage())
	}
	// Failure is terminal: no VMM is started again behind the user's back.
	time.Sleep(2 * time.Second)
	if pids := vmmProcesses(uid); len(pids) != 0 {
		t.Fatalf("a FAILED VM got a new VMM: %v", pids)
	}
	if _, err := d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid}); err != nil {
		t.Fatal(err)
	}
	d.waitGone(uid, time.Minute)
	d.assertNothingLeft(vm)
}
