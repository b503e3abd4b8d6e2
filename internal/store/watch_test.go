package store

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/liquidmetal-go/liquidmetal/api/types"
)

func watchVM(ns, name string) *types.MicroVM {
	uid := ns + "-" + name
	return &types.MicroVM{
		Spec:   &types.MicroVMSpec{Id: name, Namespace: ns, Uid: &uid},
		Status: &types.MicroVMStatus{State: types.MicroVMStatus_PENDING},
	}
}

// TestWatchDeliversEveryChangeInOrder: concurrent writers (sharing batched
// commits) produce, for each record, an unbroken chain of versions; the
// snapshot plus the events add up to the final records.
func TestWatchDeliversEveryChangeInOrder(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "w.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// One record exists before the watch: it is in the snapshot.
	if err := s.Create(ctx, watchVM("a", "pre")); err != nil {
		t.Fatal(err)
	}
	snap, sub, err := s.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if len(snap) != 1 || snap[0].GetSpec().GetId() != "pre" {
		t.Fatalf("snapshot %v", snap)
	}

	const vms, updates = 6, 20
	var wg sync.WaitGroup
	for i := range vms {
		wg.Go(func() {
			vm := watchVM("a", fmt.Sprintf("vm%d", i))
			if err := s.Create(ctx, vm); err != nil {
				t.Error(err)
				return
			}
			for range updates {
				if _, err := s.Update(ctx, vm.Spec.GetUid(), func(vm *types.MicroVM) error {
					vm.Status.Retry++
					return nil
				}); err != nil {
					t.Error(err)
				}
			}
			if err := s.Delete(ctx, vm.Spec.GetUid()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()

	last := map[string]int32{} // uid -> last version seen
	var seq uint64
	for n := 0; n < vms*(updates+2); n++ {
		e, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("after %d events: %v", n, err)
		}
		if seq != 0 && e.Seq != seq+1 {
			t.Fatalf("sequence %d after %d", e.Seq, seq)
		}
		seq = e.Seq
		uid := e.VM().GetSpec().GetUid()
		switch e.Kind {
		case Added:
			if _, seen := last[uid]; seen || e.Old != nil || e.New.GetVersion() != 1 {
				t.Fatalf("bad Added %v", e)
			}
			last[uid] = 1
		case Updated:
			if e.Old.GetVersion() != last[uid] || e.New.GetVersion() != last[uid]+1 ||
				e.New.GetStatus().GetRetry() != e.Old.GetStatus().GetRetry()+1 {
				t.Fatalf("%s: update %d->%d after version %d", uid, e.Old.GetVersion(), e.New.GetVersion(), last[uid])
			}
			last[uid] = e.New.GetVersion()
		case Removed:
			if e.New != nil || e.Old.GetVersion() != last[uid] || last[uid] != updates+1 {
				t.Fatalf("%s: removed at version %d, last seen %d", uid, e.Old.GetVersion(), last[uid])
			}
			last[uid] = -1
		}
	}
	for uid, v := range last {
		if v != -1 {
			t.Errorf("%s: not removed (last version %d)", uid, v)
		}
	}
	// Nothing more is pending.
	short, c := context.WithTimeout(ctx, 100*time.Millisecond)
	defer c()
	if e, err := sub.Next(short); err == nil {
		t.Errorf("unexpected event %v", e)
	}
}

// TestWatchNamespaceAndDetailedState: a watch of one namespace sees only
// its records, and the store keeps detailed_state in step with state.
func TestWatchNamespaceAndDetailedState(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "w.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, sub, err := s.Watch(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for _, ns := range []string{"a", "b"} {
		if err := s.Create(ctx, watchVM(ns, "x")); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		state, detailed, want types.MicroVMStatus_MicroVMState
	}{
		{types.MicroVMStatus_CREATED, types.MicroVMStatus_PENDING, types.MicroVMStatus_RUNNING},
		{types.MicroVMStatus_CREATED, types.MicroVMStatus_STOPPED, types.MicroVMStatus_STOPPED},
		{types.MicroVMStatus_FAILED, types.MicroVMStatus_STOPPED, types.MicroVMStatus_FAILED},
	}
	for _, st := range steps {
		vm, err := s.Update(ctx, "b-x", func(vm *types.MicroVM) error {
			vm.Status.State, vm.Status.DetailedState = st.state, st.detailed
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if vm.Status.DetailedState != st.want {
			t.Errorf("state %v detailed %v stored as %v, want %v", st.state, st.detailed, vm.Status.DetailedState, st.want)
		}
	}
	e, err := sub.Next(ctx)
	if err != nil || e.Kind != Added || e.New.GetSpec().GetNamespace() != "b" ||
		e.New.GetStatus().GetDetailedState() != types.MicroVMStatus_PENDING {
		t.Fatalf("first event %v %v", e, err)
	}
	for _, st := range steps {
		e, err := sub.Next(ctx)
		if err != nil || e.Kind != Updated || DetailedState(e.New.GetStatus()) != st.want {
			t.Fatalf("event %v %v, want detailed %v", e, err, st.want)
		}
	}
}
