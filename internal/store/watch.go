package store

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// Change watching. Every write transaction that changes a record takes the
// next number of the microvms bucket's sequence and publishes an Event when
// it commits. The sequence is transactional: a rolled-back write gives its
// number back, so committed changes are numbered without gaps in commit
// order. Commit handlers run after bbolt releases its lock, so they may
// publish out of order; the hub delivers in sequence order.

// EventKind says what happened to a record.
type EventKind int

const (
	// Added is a new record (Event.Old is nil).
	Added EventKind = iota + 1
	// Updated is a changed record.
	Updated
	// Removed is a deleted record (Event.New is nil).
	Removed
)

// Event is one committed change of a microVM record. Old and New are copies
// the receiver may keep.
type Event struct {
	Seq  uint64
	Kind EventKind
	Old  *types.MicroVM
	New  *types.MicroVM
	Time time.Time
}

// VM is the record after the change, or the last one for Removed.
func (e Event) VM() *types.MicroVM {
	if e.New != nil {
		return e.New
	}
	return e.Old
}

// DetailedState is the finer state of a status: state, except that a
// CREATED VM is RUNNING or STOPPED (RUNNING for records written before
// detailed_state existed).
func DetailedState(st *types.MicroVMStatus) types.MicroVMStatus_MicroVMState {
	if st.GetState() != types.MicroVMStatus_CREATED {
		return st.GetState()
	}
	if d := st.GetDetailedState(); d == types.MicroVMStatus_STOPPED {
		return d
	}
	return types.MicroVMStatus_RUNNING
}

// normalize keeps status.detailed_state consistent with status.state.
func normalize(vm *types.MicroVM) {
	if vm.Status == nil {
		return
	}
	vm.Status.DetailedState = DetailedState(vm.Status)
}

// subscriptionBuffer bounds the events a subscriber may leave unread; a
// subscriber that falls further behind is ended with ErrResourceExhausted.
const subscriptionBuffer = 10000

// hub delivers committed events to subscribers in sequence order.
type hub struct {
	mu      sync.Mutex
	next    uint64 // the sequence number delivered next
	pending map[uint64]Event
	subs    map[*Subscription]struct{}
}

func newHub(next uint64) *hub {
	return &hub{next: next, pending: map[uint64]Event{}, subs: map[*Subscription]struct{}{}}
}

func (h *hub) deliver(e Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pending[e.Seq] = e
	for {
		e, ok := h.pending[h.next]
		if !ok {
			return
		}
		delete(h.pending, h.next)
		h.next++
		for s := range h.subs {
			s.push(e)
		}
	}
}

// publish numbers a change in tx and delivers it once tx commits. It must
// be called at most once per record change, inside the write transaction.
// old must be the caller's private copy; cur is copied.
func (s *Store) publish(tx *bolt.Tx, kind EventKind, old, cur *types.MicroVM) error {
	seq, err := tx.Bucket(bucketVMs).NextSequence()
	if err != nil {
		return fmt.Errorf("number change: %w", err)
	}
	e := Event{Seq: seq, Kind: kind, Time: time.Now(), Old: old}
	if cur != nil {
		e.New = proto.CloneOf(cur)
	}
	tx.OnCommit(func() { s.hub.deliver(e) })
	return nil
}

// Subscription receives the changes committed after a Watch's snapshot.
type Subscription struct {
	h         *hub
	namespace string

	mu     sync.Mutex
	after  uint64 // events up to this sequence are in the snapshot
	queue  []Event
	err    error
	notify chan struct{}
}

func (s *Subscription) push(e Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil || e.Seq <= s.after {
		return
	}
	if s.namespace != "" && e.VM().GetSpec().GetNamespace() != s.namespace {
		return
	}
	if len(s.queue) >= subscriptionBuffer {
		s.err = fmt.Errorf("watcher fell %d changes behind: %w", len(s.queue), errdefs.ErrResourceExhausted)
		s.queue = nil
	} else {
		s.queue = append(s.queue, e)
	}
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Next returns the next change, waiting for one until ctx ends.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			e := s.queue[0]
			s.queue[0] = Event{}
			s.queue = s.queue[1:]
			s.mu.Unlock()
			return e, nil
		}
		err := s.err
		s.mu.Unlock()
		if err != nil {
			return Event{}, err
		}
		select {
		case <-ctx.Done():
			return Event{}, ctx.Err()
		case <-s.notify:
		}
	}
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.h.mu.Lock()
	delete(s.h.subs, s)
	s.h.mu.Unlock()
}

// Watch returns the microVMs in namespace ("" means every namespace) as of
// one consistent snapshot, and a subscription that receives every change
// committed after it, in commit order. Close the subscription when done.
func (s *Store) Watch(ctx context.Context, namespace string) ([]*types.MicroVM, *Subscription, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	sub := &Subscription{h: s.hub, namespace: namespace, notify: make(chan struct{}, 1)}
	// Subscribe first, so that no change after the snapshot is missed;
	// changes already in the snapshot are dropped by their number.
	sub.mu.Lock() // nothing is queued before after is known
	s.hub.mu.Lock()
	s.hub.subs[sub] = struct{}{}
	s.hub.mu.Unlock()
	var vms []*types.MicroVM
	err := s.db.View(func(tx *bolt.Tx) error {
		sub.after = tx.Bucket(bucketVMs).Sequence()
		return tx.Bucket(bucketVMs).ForEach(func(k, v []byte) error {
			vm := &types.MicroVM{}
			if err := proto.Unmarshal(v, vm); err != nil {
				return fmt.Errorf("decode microvm %s: %w", k, err)
			}
			if namespace == "" || vm.GetSpec().GetNamespace() == namespace {
				vms = append(vms, vm)
			}
			return nil
		})
	})
	sub.mu.Unlock()
	if err != nil {
		sub.Close()
		return nil, nil, err
	}
	return vms, sub, nil
}
