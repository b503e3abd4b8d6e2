package qemu

import (
	"runtime"
	"time"
)

// rdtsc reads the time stamp counter.
func rdtsc() uint64

// measureTSCkHz measures the host's TSC frequency against the monotonic
// clock over a short interval.
func measureTSCkHz() int {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t0, c0 := time.Now(), rdtsc()
	time.Sleep(20 * time.Millisecond)
	c1, t1 := rdtsc(), time.Now()
	ns := t1.Sub(t0).Nanoseconds()
	if ns <= 0 || c1 <= c0 {
		return 0
	}
	return int(float64(c1-c0) * 1e6 / float64(ns))
}
