package keylock

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// One key is held by one goroutine at a time; the map forgets it after.
func TestSameKeySerializes(t *testing.T) {
	var m Map
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock := m.Lock("a")
			n := inside.Add(1)
			for {
				old := most.Load()
				if n <= old || most.CompareAndSwap(old, n) {
					break
				}
			}
			time.Sleep(2 * time.Millisecond)
			inside.Add(-1)
			unlock()
		}()
	}
	wg.Wait()
	if most.Load() != 1 {
		t.Fatalf("%d goroutines held key a at once", most.Load())
	}
	if n := m.inUse(); n != 0 {
		t.Fatalf("%d keys still in the map", n)
	}
}

// Holding one key does not block another.
func TestOtherKeysRun(t *testing.T) {
	var m Map
	unlockA := m.Lock("a")
	defer unlockA()
	done := make(chan struct{})
	go func() {
		m.Lock("b")()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("key b waited for key a")
	}
	if n := m.inUse(); n != 1 {
		t.Fatalf("%d keys in use, want 1 (a)", n)
	}
}
