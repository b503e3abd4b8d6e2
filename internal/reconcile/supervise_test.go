package reconcile

import (
	"testing"
	"time"

	"github.com/liquidmetal-go/liquidmetal/api/types"
)

func TestRestartLimitsAndBackoff(t *testing.T) {
	for _, tc := range []struct {
		policy string
		max    int32
		want   int32
	}{
		{"", 0, 0}, {"never", 0, 0}, {"on-failure", 0, DefaultMaxRestarts}, {"on-failure", 2, 2}, {"always", 0, 0}, {"always", 3, 3},
	} {
		if got := maxRestarts(&types.MicroVMSpec{RestartPolicy: tc.policy, MaxRestarts: tc.max}); got != tc.want {
			t.Errorf("%q/%d: limit %d, want %d", tc.policy, tc.max, got, tc.want)
		}
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, time.Minute, time.Minute}
	for n, w := range want {
		if got := restartDelay(int32(n)); got != w {
			t.Errorf("delay before restart %d: %v, want %v", n+1, got, w)
		}
	}
	if got := restartDelay(1 << 30); got != restartMaxDelay {
		t.Errorf("huge count: %v", got)
	}
}
