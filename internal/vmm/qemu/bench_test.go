package qemu

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

// BenchmarkStartPaused measures Start of a paused VM until QMP confirms the
// paused state (the guest's own boot excluded), then stops it. It reports
// the median Start time as ms-start-p50.
func BenchmarkStartPaused(b *testing.B) {
	a := guest(b)
	p, _ := newProvider(b, Options{})
	ctx := context.Background()
	p.tscKHz() // measured once per provider; not part of a start
	var starts []time.Duration
	for b.Loop() {
		vm := vmm.VM{
			UID: ulid.Make().String(), Dir: b.TempDir(), VCPU: 1, MemoryMB: 256,
			KernelPath: a.Vmlinuz, InitrdPath: a.Initrd, StartPaused: true,
		}
		t0 := time.Now()
		st, err := p.Start(ctx, vm)
		if err != nil {
			b.Fatal(err)
		}
		starts = append(starts, time.Since(t0))
		if st.State != vmm.StatePaused {
			b.Fatalf("state %s after a paused start", st.State)
		}
		if err := p.Stop(ctx, vm.UID, vm.Dir, 0); err != nil {
			b.Fatal(err)
		}
	}
	slices.Sort(starts)
	b.ReportMetric(float64(starts[len(starts)/2].Microseconds())/1000, "ms-start-p50")
	b.ReportMetric(float64(starts[len(starts)*9/10].Microseconds())/1000, "ms-start-p90")
}
