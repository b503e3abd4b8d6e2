package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/test/framework"
)

// batchTimeout bounds one create or delete (of one VM or of a batch).
const batchTimeout = 3 * time.Minute

// sample is the timing of one VM's create or delete, all on this host's
// clock.
type sample struct {
	uid   string
	sent  time.Time // just before the API call
	acked time.Time // the API call returned
	done  time.Time // the first poll that saw the result (CREATED, or gone)
	// stamped is, for a create, the record's updated_at when first seen
	// CREATED: flintlockd sets it in the store transaction that makes the
	// VM CREATED, so it is the moment of the transition itself.
	stamped time.Time
}

// stampOK tells whether the daemon's stamp is usable: after the call was
// sent and not after the poll that saw it.
func (s sample) stampOK() bool {
	return !s.stamped.IsZero() && !s.stamped.Before(s.sent) && !s.stamped.After(s.done)
}

// latency is the create→running time: to the daemon's stamp when usable,
// else to the poll that saw the result.
func (s sample) latency() time.Duration {
	if s.stampOK() {
		return s.stamped.Sub(s.sent)
	}
	return s.polled()
}

// end is when the result happened (see latency).
func (s sample) end() time.Time { return s.sent.Add(s.latency()) }

func (s sample) polled() time.Duration { return s.done.Sub(s.sent) }
func (s sample) ack() time.Duration    { return s.acked.Sub(s.sent) }

// series is a set of samples of one case.
type series []sample

func (ss series) durations(f func(sample) time.Duration) []time.Duration {
	out := make([]time.Duration, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}
	return out
}

func (ss series) latencies() []time.Duration { return ss.durations(sample.latency) }
func (ss series) polls() []time.Duration     { return ss.durations(sample.polled) }
func (ss series) acks() []time.Duration      { return ss.durations(sample.ack) }

// unstamped counts samples whose daemon stamp was not usable.
func (ss series) unstamped() int {
	n := 0
	for _, s := range ss {
		if !s.stampOK() {
			n++
		}
	}
	return n
}

// wall is the time from the first call sent to the last result.
func (ss series) wall() time.Duration {
	if len(ss) == 0 {
		return 0
	}
	first, last := ss[0].sent, ss[0].end()
	for _, s := range ss[1:] {
		if s.sent.Before(first) {
			first = s.sent
		}
		if s.end().After(last) {
			last = s.end()
		}
	}
	return last.Sub(first)
}

// rate is results per second over wall.
func (ss series) rate() float64 {
	w := ss.wall()
	if w <= 0 {
		return 0
	}
	return float64(len(ss)) / w.Seconds()
}

// pct is the p-quantile (0 < p ≤ 1) by nearest rank: with fewer than 100
// values p99 is the maximum.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(i, 0)]
}

// vmSpec is the benchmark's VM: kernel and initrd from the test images, no
// root volume, no network, a one-line user-data script.
func (b *bench) vmSpec(ns, name string) *types.MicroVMSpec {
	ud := "#!/bin/sh\necho liquidmetal-bench\n"
	return &types.MicroVMSpec{
		Id:         name,
		Namespace:  ns,
		Vcpu:       1,
		MemoryInMb: int32(b.o.memMB),
		Labels:     map[string]string{"suite": "bench", "case": ns},
		Kernel:     &types.Kernel{Image: b.env.Images.Kernel},
		Initrd:     &types.Initrd{Image: b.env.Images.Initrd},
		Metadata:   map[string]string{"user-data": base64.StdEncoding.EncodeToString([]byte(ud))},
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func failedErr(vm *types.MicroVM) error {
	return fmt.Errorf("vm %s/%s (%s) FAILED (%s): %s", vm.GetSpec().GetNamespace(), vm.GetSpec().GetId(),
		vm.GetSpec().GetUid(), vm.GetStatus().GetFailureReason(), vm.GetStatus().GetFailureMessage())
}

// createOne creates one VM and polls Get every poll until it is CREATED.
func (b *bench) createOne(ctx context.Context, d *framework.Daemon, ns, name string, poll time.Duration) (sample, error) {
	req := &v1alpha1.CreateMicroVMRequest{Microvm: b.vmSpec(ns, name)}
	s := sample{sent: time.Now()}
	resp, err := d.Client.CreateMicroVM(ctx, req)
	s.acked = time.Now()
	if err != nil {
		return s, fmt.Errorf("create %s/%s: %w", ns, name, err)
	}
	s.uid = resp.GetMicrovm().GetSpec().GetUid()
	for {
		got, err := d.Client.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: s.uid})
		now := time.Now()
		if err != nil {
			return s, fmt.Errorf("get %s: %w", s.uid, err)
		}
		vm := got.GetMicrovm()
		switch vm.GetStatus().GetState() {
		case types.MicroVMStatus_CREATED:
			s.done = now
			s.stamped = vm.GetSpec().GetUpdatedAt().AsTime()
			return s, nil
		case types.MicroVMStatus_FAILED:
			return s, failedErr(vm)
		}
		if now.Sub(s.sent) > batchTimeout {
			return s, fmt.Errorf("vm %s not CREATED after %s", s.uid, batchTimeout)
		}
		if err := sleepCtx(ctx, poll); err != nil {
			return s, err
		}
	}
}

// deleteOne deletes one VM and polls Get every poll until it is NotFound.
func (b *bench) deleteOne(ctx context.Context, d *framework.Daemon, uid string, poll time.Duration) (sample, error) {
	s := sample{uid: uid, sent: time.Now()}
	_, err := d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid})
	s.acked = time.Now()
	if err != nil {
		return s, fmt.Errorf("delete %s: %w", uid, err)
	}
	for {
		_, err := d.Client.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: uid})
		now := time.Now()
		if status.Code(err) == codes.NotFound {
			s.done = now
			return s, nil
		}
		if err != nil {
			return s, fmt.Errorf("get %s: %w", uid, err)
		}
		if now.Sub(s.sent) > batchTimeout {
			return s, fmt.Errorf("vm %s still there %s after delete", uid, batchTimeout)
		}
		if err := sleepCtx(ctx, poll); err != nil {
			return s, err
		}
	}
}

// createBatch sends n creates at once (VMs ns/vm-000…) and lists the
// namespace every poll until all are CREATED.
func (b *bench) createBatch(ctx context.Context, d *framework.Daemon, ns string, n int, poll time.Duration) (series, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	samples := make(series, n)
	errc := make(chan error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			req := &v1alpha1.CreateMicroVMRequest{Microvm: b.vmSpec(ns, fmt.Sprintf("vm-%03d", i))}
			<-start
			samples[i].sent = time.Now()
			resp, err := d.Client.CreateMicroVM(ctx, req)
			samples[i].acked = time.Now()
			if err != nil {
				errc <- fmt.Errorf("create %s/vm-%03d: %w", ns, i, err)
				return
			}
			samples[i].uid = resp.GetMicrovm().GetSpec().GetUid()
		})
	}
	close(start)
	seen := map[string]sample{} // uid → done and stamped
	err := func() error {
		began := time.Now()
		for len(seen) < n {
			select {
			case err := <-errc:
				return err
			default:
			}
			resp, err := d.Client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{Namespace: ns})
			now := time.Now()
			if err != nil {
				return fmt.Errorf("list %s: %w", ns, err)
			}
			for _, vm := range resp.GetMicrovm() {
				uid := vm.GetSpec().GetUid()
				if _, ok := seen[uid]; ok {
					continue
				}
				switch vm.GetStatus().GetState() {
				case types.MicroVMStatus_CREATED:
					seen[uid] = sample{done: now, stamped: vm.GetSpec().GetUpdatedAt().AsTime()}
				case types.MicroVMStatus_FAILED:
					return failedErr(vm)
				}
			}
			if now.Sub(began) > batchTimeout {
				return fmt.Errorf("%d of %d VMs of %s CREATED after %s", len(seen), n, ns, batchTimeout)
			}
			if err := sleepCtx(ctx, poll); err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil {
		cancel()
	}
	wg.Wait()
	if err != nil {
		return nil, err
	}
	for i := range samples {
		s, ok := seen[samples[i].uid]
		if !ok {
			return nil, fmt.Errorf("vm %s of %s was not seen CREATED", samples[i].uid, ns)
		}
		samples[i].done, samples[i].stamped = s.done, s.stamped
	}
	return samples, nil
}

// deleteBatch sends the deletes of uids (all in namespace ns) at once and
// lists the namespace every poll until none of them is left.
func (b *bench) deleteBatch(ctx context.Context, d *framework.Daemon, ns string, uids []string, poll time.Duration) (series, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	samples := make(series, len(uids))
	index := map[string]int{}
	for i, uid := range uids {
		samples[i].uid = uid
		index[uid] = i
	}
	errc := make(chan error, len(uids))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, uid := range uids {
		wg.Go(func() {
			<-start
			samples[i].sent = time.Now()
			_, err := d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid})
			samples[i].acked = time.Now()
			if err != nil {
				errc <- fmt.Errorf("delete %s: %w", uid, err)
			}
		})
	}
	close(start)
	gone := map[string]time.Time{}
	err := func() error {
		began := time.Now()
		for len(gone) < len(uids) {
			select {
			case err := <-errc:
				return err
			default:
			}
			resp, err := d.Client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{Namespace: ns})
			now := time.Now()
			if err != nil {
				return fmt.Errorf("list %s: %w", ns, err)
			}
			present := map[string]bool{}
			for _, vm := range resp.GetMicrovm() {
				present[vm.GetSpec().GetUid()] = true
			}
			for uid := range index {
				if _, ok := gone[uid]; !ok && !present[uid] {
					gone[uid] = now
				}
			}
			if now.Sub(began) > batchTimeout {
				return fmt.Errorf("%d of %d VMs of %s still there %s after delete", len(uids)-len(gone), len(uids), ns, batchTimeout)
			}
			if err := sleepCtx(ctx, poll); err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil {
		cancel()
	}
	wg.Wait()
	if err != nil {
		return nil, err
	}
	for uid, t := range gone {
		samples[index[uid]].done = t
	}
	return samples, nil
}

// listTimes times calls sequential List calls (after one warm-up), each
// of which must return want VMs.
func listTimes(ctx context.Context, d *framework.Daemon, req *v1alpha1.ListMicroVMsRequest, calls, want int) ([]time.Duration, error) {
	out := make([]time.Duration, 0, calls)
	for i := -1; i < calls; i++ {
		t0 := time.Now()
		resp, err := d.Client.ListMicroVMs(ctx, req)
		el := time.Since(t0)
		if err != nil {
			return nil, fmt.Errorf("list: %w", err)
		}
		if n := len(resp.GetMicrovm()); n != want {
			return nil, fmt.Errorf("list returned %d VMs, want %d", n, want)
		}
		if i >= 0 {
			out = append(out, el)
		}
	}
	return out, nil
}

// procStatusKB reads a "Name:  N kB" line of /proc/<pid>/status.
func procStatusKB(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return scanKB(f, field)
}

// meminfoKB reads a field of /proc/meminfo.
func meminfoKB(field string) (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return scanKB(f, field)
}

func scanKB(f *os.File, field string) (int64, error) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no %s", f.Name(), field)
}

// memory is a snapshot of a daemon's memory use.
type memory struct {
	vms         int
	rssKB       int64 // VmRSS
	hwmKB       int64 // VmHWM: the peak RSS so far
	heapInUse   float64
	goroutines  float64
	vmmRSSKB    int64 // sum of the VMM processes' VmRSS
	vmmCount    int
	description string
}

// measureMemory reads the daemon's VmRSS and VmHWM, the Go runtime's view
// from its /metrics, and the RSS of its VMM processes.
func measureMemory(ctx context.Context, d *framework.Daemon, vms int, what string) (memory, error) {
	m := memory{vms: vms, description: what}
	var err error
	if m.rssKB, err = procStatusKB(d.Pid(), "VmRSS"); err != nil {
		return m, err
	}
	if m.hwmKB, err = procStatusKB(d.Pid(), "VmHWM"); err != nil {
		return m, err
	}
	metrics, err := scrape(ctx, "http://"+d.MetricsAddr+"/metrics")
	if err != nil {
		return m, err
	}
	m.heapInUse, m.goroutines = metrics["go_memstats_heap_inuse_bytes"], metrics["go_goroutines"]
	for _, pid := range framework.VMMProcesses(d.StateDir) {
		if pid == d.Pid() {
			continue
		}
		if kb, err := procStatusKB(pid, "VmRSS"); err == nil {
			m.vmmRSSKB += kb
			m.vmmCount++
		}
	}
	return m, nil
}

// scrape reads the unlabelled samples of a Prometheus text endpoint.
func scrape(ctx context.Context, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.Contains(line, "{") {
			continue
		}
		k, v, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
			out[k] = f
		}
	}
	return out, sc.Err()
}
