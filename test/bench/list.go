package main

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/store"
	"github.com/liquidmetal-go/liquidmetal/test/framework"
)

// listNamespaces is the number of namespaces the stored records spread
// over; one of them is listed on its own.
const listNamespaces = 10

// listPhase times List on a second daemon whose store holds b.o.records
// records, written before it starts: copies of a real CREATED VM's record
// with new uids and names, in state FAILED, so that the reconciler leaves
// them alone and no VMM runs.
func (b *bench) listPhase(ctx context.Context) error {
	n := b.o.records
	if n <= 0 || b.template == nil {
		return nil
	}
	b.step("List: writing %d records into a new daemon's store", n)
	dir := filepath.Join(b.o.dir, "list")
	// flintlockd keeps its store in <state-dir>/flintlockd.db.
	st, err := store.Open(filepath.Join(dir, "flintlockd.db"))
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errc := make(chan error, n)
	sem := make(chan struct{}, 64) // concurrent writers share commits
	for i := range n {
		vm := proto.CloneOf(b.template)
		uid := ulid.Make().String()
		vm.Spec.Uid = &uid
		vm.Spec.Id = fmt.Sprintf("rec-%04d", i)
		vm.Spec.Namespace = fmt.Sprintf("list-%d", i%listNamespaces)
		vm.Spec.Labels = map[string]string{"suite": "bench", "case": "list", "group": fmt.Sprint(i % listNamespaces)}
		vm.Status.State = types.MicroVMStatus_FAILED
		vm.Status.FailureReason = "BenchRecord"
		vm.Status.FailureMessage = "record written by the benchmark; no VMM"
		vm.Status.VmmPid = 0
		if i == 0 {
			b.recordBytes = proto.Size(vm)
		}
		if i%listNamespaces == 3 {
			b.listNSCount++
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := st.Create(ctx, vm); err != nil {
				errc <- err
			}
		})
	}
	wg.Wait()
	close(errc)
	cerr := st.Close()
	if err := <-errc; err != nil {
		return fmt.Errorf("writing records: %w", err)
	}
	if cerr != nil {
		return cerr
	}

	d, err := b.startDaemon(ctx, "list", false)
	if err != nil {
		return err
	}
	m, err := measureMemory(ctx, d, 0, fmt.Sprintf("%d records stored, before any List", n))
	if err != nil {
		return err
	}
	b.mem = append(b.mem, m)
	b.step("List of %d stored records, %d calls", n, b.o.listCalls)
	if b.list1000, err = listTimes(ctx, d, &v1alpha1.ListMicroVMsRequest{}, b.o.listCalls, n); err != nil {
		return err
	}
	if b.listBytes, b.listDecode, err = decodeCost(ctx, d); err != nil {
		return err
	}
	if b.listNSCount > 0 {
		if b.listNS, err = listTimes(ctx, d, &v1alpha1.ListMicroVMsRequest{Namespace: "list-3"}, b.o.listCalls, b.listNSCount); err != nil {
			return err
		}
	}
	if m, err = measureMemory(ctx, d, 0, fmt.Sprintf("%d records stored, after the List calls", n)); err != nil {
		return err
	}
	b.mem = append(b.mem, m)
	d.Stop()
	return nil
}

// decodeCost is the size of a List response of every record and the
// client's time to decode it (the median of 20), part of every List time.
func decodeCost(ctx context.Context, d *framework.Daemon) (int, time.Duration, error) {
	resp, err := d.Client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{})
	if err != nil {
		return 0, 0, err
	}
	raw, err := proto.Marshal(resp)
	if err != nil {
		return 0, 0, err
	}
	var ts []time.Duration
	for range 20 {
		t0 := time.Now()
		var got v1alpha1.ListMicroVMsResponse
		if err := proto.Unmarshal(raw, &got); err != nil {
			return 0, 0, err
		}
		ts = append(ts, time.Since(t0))
	}
	return len(raw), pct(ts, 0.5), nil
}
