package qemu

import (
	"runtime"
	"testing"
)

// Two measurements of the host TSC agree and are plausible.
func TestMeasureTSC(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the TSC is an x86 counter")
	}
	a, b := measureTSCkHz(), measureTSCkHz()
	t.Logf("host TSC: %d kHz, %d kHz", a, b)
	if a < 100_000 || a > 10_000_000 {
		t.Fatalf("implausible TSC frequency %d kHz", a)
	}
	if d := float64(a-b) / float64(a); d > 0.01 || d < -0.01 {
		t.Fatalf("measurements differ by %.2f%%", 100*d)
	}
}
