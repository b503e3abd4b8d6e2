// Package keylock owns per-key locking: work on one key (an image
// reference, a volume file) is serialized while work on other keys runs in
// parallel, and a key's lock is freed once nobody holds or waits for it.
package keylock

import "sync"

// Map is a set of locks, one per key in use. The zero value is ready.
type Map struct {
	mu    sync.Mutex
	locks map[string]*entry
}

type entry struct {
	mu   sync.Mutex
	refs int // holders and waiters
}

// Lock waits for key's lock and returns the function that releases it.
func (m *Map) Lock(key string) (unlock func()) {
	m.mu.Lock()
	if m.locks == nil {
		m.locks = map[string]*entry{}
	}
	e := m.locks[key]
	if e == nil {
		e = &entry{}
		m.locks[key] = e
	}
	e.refs++
	m.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		m.mu.Lock()
		e.refs--
		if e.refs == 0 {
			delete(m.locks, key)
		}
		m.mu.Unlock()
	}
}

// inUse is how many keys have a holder or a waiter.
func (m *Map) inUse() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.locks)
}
