package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	powerv1 "github.com/liquidmetal-go/liquidmetal/api/services/power/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// persistUserData writes a token to the root volume on the first boot and
// prints it back on every later one.
const persistUserData = `#!/bin/sh
if [ -f /persist.txt ]; then
	echo "PERSISTED: $(cat /persist.txt)"
else
	echo "token-$(date +%s)" >/persist.txt
	sync
	echo "WROTE: $(cat /persist.txt)"
fi
`

// waitDetailed polls Get until the VM's detailed state is want (and, for a
// restart, its restart generation is at least gen).
func (d *daemon) waitDetailed(uid string, want types.MicroVMStatus_MicroVMState, gen int64, timeout time.Duration) *types.MicroVM {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	var last *types.MicroVM
	for time.Now().Before(deadline) {
		resp, err := d.Client.GetMicroVM(context.Background(), &v1alpha1.GetMicroVMRequest{Uid: uid})
		if err != nil {
			d.t.Fatal(err)
		}
		last = resp.GetMicrovm()
		st := last.GetStatus()
		if st.GetState() == types.MicroVMStatus_FAILED {
			d.t.Fatalf("VM FAILED: %s: %s\n%s", st.GetFailureReason(), st.GetFailureMessage(), d.LogTail(40))
		}
		if st.GetDetailedState() == want && st.GetRestartGeneration() >= gen {
			return last
		}
		time.Sleep(100 * time.Millisecond)
	}
	d.t.Fatalf("VM still %v after %v, want %v\n%s", last.GetStatus().GetDetailedState(), timeout, want, d.LogTail(40))
	return nil
}

// followConsole runs `fl console -f UID` and returns a function that waits
// for text in its output while it still runs.
// Its pid is returned too (its command line names the uid, as a VMM's
// does), and a channel closed when it exits.
func (d *daemon) followConsole(uid string) (func(text string, timeout time.Duration), int, <-chan struct{}) {
	d.t.Helper()
	cmd := exec.Command(env.FL, "--insecure", "--address", d.GRPCAddr, "console", "-f", uid)
	out, err := cmd.StdoutPipe()
	if err != nil {
		d.t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	exited := make(chan struct{})
	var (
		mu   sync.Mutex
		seen strings.Builder
	)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			mu.Lock()
			seen.WriteString(sc.Text() + "\n")
			mu.Unlock()
		}
		_ = cmd.Wait()
		close(exited)
	}()
	d.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	return func(text string, timeout time.Duration) {
		d.t.Helper()
		deadline := time.Now().Add(timeout)
		for time.Now().Before(deadline) {
			mu.Lock()
			ok := strings.Contains(seen.String(), text)
			mu.Unlock()
			select {
			case <-exited:
				d.t.Fatalf("fl console -f exited before printing %q:\n%s", text, tail(seen.String(), 30))
			default:
			}
			if ok {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		d.t.Fatalf("fl console -f printed no %q in %v:\n%s", text, timeout, tail(seen.String(), 30))
	}, cmd.Process.Pid, exited
}

// TestPowerStopStartRestart: a VM stopped keeps its files and stays
// stopped (no VMM process, not FAILED, not restarted by the resync);
// started again it boots from the same root volume, where the write of its
// first boot survived; restart does the same in one call. The watch
// reports every transition in order, and `fl console -f` follows the
// console live.
func TestPowerStopStartRestart(t *testing.T) {
	d := startDaemon(t, "--resync-period=1s")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	power := powerv1.NewPowerServiceClient(d.Conn)

	w, err := power.WatchMicroVMs(ctx, &powerv1.WatchMicroVMsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := w.Recv(); err != nil || ev.GetType() != powerv1.WatchMicroVMsResponse_SYNCED {
		t.Fatalf("first watch event %v %v, want SYNCED on an empty daemon", ev, err)
	}
	var (
		evMu   sync.Mutex
		events []*powerv1.WatchMicroVMsResponse
	)
	go func() {
		for {
			ev, err := w.Recv()
			if err != nil {
				return
			}
			evMu.Lock()
			events = append(events, ev)
			evMu.Unlock()
		}
	}()

	sp := spec("power", "unused")
	sp.Metadata["user-data"] = base64.StdEncoding.EncodeToString([]byte(persistUserData))
	resp, err := d.Client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: sp})
	if err != nil {
		t.Fatal(err)
	}
	uid := resp.GetMicrovm().GetSpec().GetUid()
	// fl console -f from before the boot: the output shows up while it runs.
	waitFL, flPid, flExited := d.followConsole(uid)
	vmmProcesses := func(uid string) []int {
		return slices.DeleteFunc(vmmProcesses(uid), func(pid int) bool { return pid == flPid })
	}
	vm := d.waitState(uid, types.MicroVMStatus_CREATED, 2*time.Minute)
	waitFL("LIQUIDMETAL-GUEST: booted", bootTimeout)
	waitFL("WROTE: token-", bootTimeout)
	first := vmmProcesses(uid)
	if len(first) != 1 {
		t.Fatalf("want one VMM process, got %v", first)
	}

	// Stop.
	_, err = power.StopMicroVM(ctx, &powerv1.StopMicroVMRequest{Uid: uid, Timeout: durationpb.New(2 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	stopped := d.waitDetailed(uid, types.MicroVMStatus_STOPPED, 0, time.Minute)
	if st := stopped.GetStatus(); st.GetState() != types.MicroVMStatus_CREATED || st.GetVmmPid() != 0 {
		t.Errorf("stopped VM: v1alpha1 state %v (want CREATED), pid %d", st.GetState(), st.GetVmmPid())
	}
	if pids := vmmProcesses(uid); len(pids) != 0 {
		t.Fatalf("VMM processes after stop: %v", pids)
	}
	root := filepath.Join(d.vmDir(vm), "volumes", "root.img")
	for _, f := range []string{root, filepath.Join(d.vmDir(vm), "kernel"), filepath.Join(d.vmDir(vm), "cidata.img")} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("stop removed a file of the VM: %v", err)
		}
	}
	_, err = power.StopMicroVM(ctx, &powerv1.StopMicroVMRequest{Uid: uid})
	if err == nil || !strings.Contains(err.Error(), "FailedPrecondition") {
		t.Errorf("second stop: %v, want FailedPrecondition", err)
	}
	// Several resyncs later it is still stopped, with no VMM.
	time.Sleep(3 * time.Second)
	if pids := vmmProcesses(uid); len(pids) != 0 {
		t.Fatalf("the resync restarted a stopped VM: %v", pids)
	}
	d.waitDetailed(uid, types.MicroVMStatus_STOPPED, 0, time.Second)

	// Start: same files, the first boot's write is there.
	if _, err := power.StartMicroVM(ctx, &powerv1.StartMicroVMRequest{Uid: uid}); err != nil {
		t.Fatal(err)
	}
	d.waitDetailed(uid, types.MicroVMStatus_RUNNING, 0, time.Minute)
	second := vmmProcesses(uid)
	if len(second) != 1 || second[0] == first[0] {
		t.Fatalf("after start VMM processes %v (before stop %v)", second, first)
	}
	waitFL("PERSISTED: token-", bootTimeout)
	console, err := os.ReadFile(filepath.Join(d.vmDir(vm), "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	// The user-data document itself is printed too: match the output line.
	wrote := "token-" + between(string(console), "WROTE: token-", "\n")
	if wrote == "token-" || !strings.Contains(string(console), "PERSISTED: "+wrote) {
		t.Fatalf("the token written before stop (%q) is not what the guest read after start:\n%s", wrote, tail(string(console), 30))
	}

	// Restart in one call.
	r, err := power.RestartMicroVM(ctx, &powerv1.RestartMicroVMRequest{Uid: uid, Timeout: durationpb.New(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	d.waitDetailed(uid, types.MicroVMStatus_RUNNING, r.GetMicrovm().GetSpec().GetPower().GetRestartGeneration(), time.Minute)
	third := vmmProcesses(uid)
	if len(third) != 1 || third[0] == second[0] {
		t.Fatalf("after restart VMM processes %v (before %v)", third, second)
	}
	deadline := time.Now().Add(bootTimeout)
	for {
		b, _ := os.ReadFile(filepath.Join(d.vmDir(vm), "console.log"))
		if strings.Count(string(b), "PERSISTED: "+wrote) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no second boot after restart:\n%s", tail(string(b), 30))
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Delete.
	if _, err := d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid}); err != nil {
		t.Fatal(err)
	}
	d.waitGone(uid, time.Minute)
	// fl console -f ends by itself once the VM is gone.
	select {
	case <-flExited:
	case <-time.After(10 * time.Second):
		t.Fatal("fl console -f still runs 10s after the VM was deleted")
	}
	d.assertNothingLeft(vm)

	// Every transition, in order.
	want := []string{
		"ADDED PENDING",
		"CHANGED PENDING->RUNNING",
		"CHANGED RUNNING->STOPPED", // stop
		"CHANGED STOPPED->RUNNING", // start
		"CHANGED RUNNING->STOPPED", // restart
		"CHANGED STOPPED->RUNNING",
		"CHANGED RUNNING->DELETING",
		"REMOVED DELETING",
	}
	var got []string
	deadline = time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		got = got[:0]
		evMu.Lock()
		for _, ev := range events {
			if ev.GetUid() != uid {
				t.Errorf("event of another VM: %v", ev)
				continue
			}
			s := ev.GetType().String() + " " + ev.GetNewState().String()
			if ev.GetType() == powerv1.WatchMicroVMsResponse_CHANGED {
				s = fmt.Sprintf("CHANGED %s->%s", ev.GetOldState(), ev.GetNewState())
			}
			got = append(got, s)
		}
		evMu.Unlock()
		if len(got) >= len(want) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("watch events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// between returns the text after the first start up to end.
func between(s, start, end string) string {
	_, after, ok := strings.Cut(s, start)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(after, end)
	return strings.TrimSpace(v)
}
