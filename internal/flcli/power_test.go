package flcli

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/server"
	"github.com/liquidmetal-go/liquidmetal/internal/store"
)

type nopQueue struct{}

func (nopQueue) Enqueue(string) {}

// TestPowerCommands runs stop, start, restart and watch against the real
// server and store (no reconciler: --wait=false).
func TestPowerCommands(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	srv, err := server.New(server.Config{Store: st, Queue: nopQueue{}, Providers: []string{"qemu"}, DefaultProvider: "qemu",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	gs := srv.GRPCServer(nil)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	addr := lis.Addr().String()
	uid := "01TESTPOWERCMDS"
	ctx := context.Background()
	if err := st.Create(ctx, &types.MicroVM{
		Spec:   &types.MicroVMSpec{Id: "web", Namespace: "ns", Uid: &uid},
		Status: &types.MicroVMStatus{State: types.MicroVMStatus_CREATED},
	}); err != nil {
		t.Fatal(err)
	}
	base := []string{"--insecure", "--address", addr}
	if out, _, err := fl(t, append(base, "stop", uid, "--wait=false", "--grace", "3s")...); err != nil || !strings.Contains(out, "stop requested") {
		t.Fatalf("stop: %q %v", out, err)
	}
	vm, _ := st.Get(ctx, uid)
	if !vm.GetSpec().GetPower().GetStopped() || vm.GetSpec().GetPower().GetStopTimeout().AsDuration() != 3*time.Second {
		t.Fatalf("power after fl stop: %v", vm.GetSpec().GetPower())
	}
	if _, _, err := fl(t, append(base, "stop", uid, "--wait=false")...); err == nil || !strings.Contains(err.Error(), "FailedPrecondition") {
		t.Fatalf("second stop: %v", err)
	}
	if _, err := st.Update(ctx, uid, func(vm *types.MicroVM) error {
		vm.Status.DetailedState = types.MicroVMStatus_STOPPED
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// start --wait waits for RUNNING: report it as a reconciler would.
	go func() {
		time.Sleep(300 * time.Millisecond)
		_, _ = st.Update(ctx, uid, func(vm *types.MicroVM) error {
			vm.Status.DetailedState = types.MicroVMStatus_RUNNING
			return nil
		})
	}()
	if out, _, err := fl(t, append(base, "start", uid)...); err != nil || !strings.Contains(out, uid+" RUNNING") {
		t.Fatalf("start: %q %v", out, err)
	}
	out, _, err := fl(t, append(base, "watch", "--timeout", "500ms")...)
	if err != nil || !strings.Contains(out, "SNAPSHOT ns/web "+uid+" RUNNING") || !strings.Contains(out, "SYNCED") {
		t.Fatalf("watch: %q %v", out, err)
	}
}
