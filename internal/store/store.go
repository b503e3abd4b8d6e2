// Package store owns the durable state of flintlockd: one record per microVM
// (the whole types.MicroVM message: spec, status and version), kept in a
// bbolt file and indexed by uid and by namespace/name.
//
// Every mutation is a single bbolt transaction, so the file is consistent
// after a crash at any instant: a record and its name index entry are
// written and removed together, and a call that returned nil is on disk.
// Watch streams every committed change, in commit order (watch.go).
package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"google.golang.org/protobuf/proto"

	"github.com/liquidmetal-go/liquidmetal/api/types"
)

var (
	// bucketVMs maps uid -> proto-encoded types.MicroVM.
	bucketVMs = []byte("microvms")
	// bucketNames maps namespace 0x00 name -> uid. NUL sorts before every
	// other byte, so a cursor walk yields records ordered by namespace and
	// then name, and a namespace's keys form one contiguous prefix range.
	bucketNames = []byte("names")
)

// keySep separates namespace and name in the name index.
const keySep = 0x00

// openTimeout bounds the wait for the file lock: a second daemon on the same
// state file fails quickly instead of hanging.
const openTimeout = 500 * time.Millisecond

// Store is the bbolt-backed microVM store. It is safe for concurrent use.
type Store struct {
	db *bolt.DB
	// writers counts writes in flight: a lone writer commits at once, and
	// concurrent writers share commits through db.Batch.
	writers atomic.Int32
	// hub delivers committed changes to watchers (watch.go).
	hub *hub
}

// Open opens (creating if needed) the store file at path. If another process
// holds the file, Open fails after a short timeout with errdefs.ErrUnavailable.
func Open(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create store directory: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      openTimeout,
		FreelistType: bolt.FreelistMapType,
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: file is locked by another process: %w", path, errors.Join(errdefs.ErrUnavailable, err))
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// Commits cost an fsync; a short batch window lets concurrent writers
	// share one without adding much latency.
	db.MaxBatchDelay = 2 * time.Millisecond
	var seq uint64
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketVMs, bucketNames} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("create bucket %s: %w", b, err)
			}
		}
		seq = tx.Bucket(bucketVMs).Sequence()
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return &Store{db: db, hub: newHub(seq + 1)}, nil
}

// Close closes the store file.
func (s *Store) Close() error {
	return s.db.Close()
}

// Create stores a new microVM. vm.Spec.Uid must be set; vm.Version is set
// to 1. If the namespace/name or the uid is taken it fails with
// errdefs.ErrAlreadyExists.
func (s *Store) Create(ctx context.Context, vm *types.MicroVM) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	uid, nameKey, err := keysOf(vm)
	if err != nil {
		return err
	}
	vm.Version = 1
	normalize(vm)
	data, err := proto.Marshal(vm)
	if err != nil {
		return fmt.Errorf("encode microvm %s: %w", uid, err)
	}
	spec := vm.GetSpec()
	return s.write(func(tx *bolt.Tx) error {
		vms, names := tx.Bucket(bucketVMs), tx.Bucket(bucketNames)
		if names.Get(nameKey) != nil {
			return fmt.Errorf("microvm %s/%s: %w", spec.GetNamespace(), spec.GetId(), errdefs.ErrAlreadyExists)
		}
		if vms.Get([]byte(uid)) != nil {
			return fmt.Errorf("microvm uid %s: %w", uid, errdefs.ErrAlreadyExists)
		}
		if err := vms.Put([]byte(uid), data); err != nil {
			return fmt.Errorf("put microvm %s: %w", uid, err)
		}
		if err := names.Put(nameKey, []byte(uid)); err != nil {
			return fmt.Errorf("put name index of %s: %w", uid, err)
		}
		return s.publish(tx, Added, nil, vm)
	})
}

// Get returns the microVM with the given uid, or errdefs.ErrNotFound.
func (s *Store) Get(ctx context.Context, uid string) (*types.MicroVM, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	vm := &types.MicroVM{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return decodeVM(tx.Bucket(bucketVMs), []byte(uid), vm)
	})
	if err != nil {
		return nil, err
	}
	return vm, nil
}

// GetByName returns the microVM called name in namespace, or
// errdefs.ErrNotFound.
func (s *Store) GetByName(ctx context.Context, namespace, name string) (*types.MicroVM, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	vm := &types.MicroVM{}
	err := s.db.View(func(tx *bolt.Tx) error {
		uid := tx.Bucket(bucketNames).Get(nameKey(namespace, name))
		if uid == nil {
			return fmt.Errorf("microvm %s/%s not found: %w", namespace, name, errdefs.ErrNotFound)
		}
		return decodeVM(tx.Bucket(bucketVMs), uid, vm)
	})
	if err != nil {
		return nil, err
	}
	return vm, nil
}

// List returns the microVMs in namespace ("" means every namespace),
// optionally only those called *name, sorted by namespace and then name.
func (s *Store) List(ctx context.Context, namespace string, name *string) ([]*types.MicroVM, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []*types.MicroVM
	err := s.db.View(func(tx *bolt.Tx) error {
		vms, names := tx.Bucket(bucketVMs), tx.Bucket(bucketNames)
		if namespace != "" && name != nil {
			uid := names.Get(nameKey(namespace, *name))
			if uid == nil {
				return nil
			}
			vm := &types.MicroVM{}
			if err := decodeVM(vms, uid, vm); err != nil {
				return err
			}
			out = append(out, vm)
			return nil
		}
		var prefix []byte
		if namespace != "" {
			prefix = append([]byte(namespace), keySep)
		}
		c := names.Cursor()
		for k, uid := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, uid = c.Next() {
			if name != nil && string(k[bytes.IndexByte(k, keySep)+1:]) != *name {
				continue
			}
			vm := &types.MicroVM{}
			if err := decodeVM(vms, uid, vm); err != nil {
				return err
			}
			out = append(out, vm)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Update applies fn to the stored microVM and writes the result with the
// version increased by one, atomically: if the record changed meanwhile, fn
// runs again on the fresh record, so fn may run more than once and must only
// change the vm it is given. An error from fn aborts the update and is
// returned as is. fn may not change uid, namespace or name
// (errdefs.ErrInvalidArgument).
func (s *Store) Update(ctx context.Context, uid string, fn func(vm *types.MicroVM) error) (*types.MicroVM, error) {
	for {
		// Optimistic concurrency: fn runs outside the write transaction, so
		// a failing fn never holds up or re-runs other writers' batches, and
		// the commit checks that the stored bytes are still those fn saw.
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var read []byte
		err := s.db.View(func(tx *bolt.Tx) error {
			data := tx.Bucket(bucketVMs).Get([]byte(uid))
			if data == nil {
				return fmt.Errorf("microvm %s not found: %w", uid, errdefs.ErrNotFound)
			}
			read = bytes.Clone(data)
			return nil
		})
		if err != nil {
			return nil, err
		}
		cur := &types.MicroVM{}
		if err := proto.Unmarshal(read, cur); err != nil {
			return nil, fmt.Errorf("decode microvm %s: %w", uid, err)
		}
		old := proto.CloneOf(cur)
		readVersion := cur.GetVersion()
		oldKey := nameKey(cur.GetSpec().GetNamespace(), cur.GetSpec().GetId())
		if err := fn(cur); err != nil {
			return nil, err
		}
		newUID, newKey, err := keysOf(cur)
		if err != nil {
			return nil, err
		}
		if newUID != uid || !bytes.Equal(newKey, oldKey) {
			return nil, fmt.Errorf("microvm %s: uid, namespace and name cannot change: %w", uid, errdefs.ErrInvalidArgument)
		}
		cur.Version = readVersion + 1
		normalize(cur)
		data, err := proto.Marshal(cur)
		if err != nil {
			return nil, fmt.Errorf("encode microvm %s: %w", uid, err)
		}
		var conflict bool
		err = s.write(func(tx *bolt.Tx) error {
			conflict = false
			vms := tx.Bucket(bucketVMs)
			stored := vms.Get([]byte(uid))
			if stored == nil {
				return fmt.Errorf("microvm %s not found: %w", uid, errdefs.ErrNotFound)
			}
			if !bytes.Equal(stored, read) {
				conflict = true
				return nil
			}
			if err := vms.Put([]byte(uid), data); err != nil {
				return err
			}
			return s.publish(tx, Updated, old, cur)
		})
		if err != nil {
			return nil, err
		}
		if !conflict {
			return cur, nil
		}
	}
}

// Delete removes the microVM and its name index entry. Deleting a uid that
// is not stored is not an error.
func (s *Store) Delete(ctx context.Context, uid string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.write(func(tx *bolt.Tx) error {
		vms, names := tx.Bucket(bucketVMs), tx.Bucket(bucketNames)
		var vm types.MicroVM
		if err := decodeVM(vms, []byte(uid), &vm); err != nil {
			if errdefs.IsNotFound(err) {
				return nil
			}
			return err
		}
		key := nameKey(vm.GetSpec().GetNamespace(), vm.GetSpec().GetId())
		// Only drop the index entry if it still points at this record.
		if bytes.Equal(names.Get(key), []byte(uid)) {
			if err := names.Delete(key); err != nil {
				return fmt.Errorf("delete name index of %s: %w", uid, err)
			}
		}
		if err := vms.Delete([]byte(uid)); err != nil {
			return fmt.Errorf("delete microvm %s: %w", uid, err)
		}
		return s.publish(tx, Removed, &vm, nil)
	})
}

// write runs fn in a read-write transaction. A lone writer commits at once;
// while other writes are in flight it joins a batch so that concurrent
// writers share one commit (fn must then be safe to run more than once).
func (s *Store) write(fn func(tx *bolt.Tx) error) error {
	n := s.writers.Add(1)
	defer s.writers.Add(-1)
	if n == 1 {
		return s.db.Update(fn)
	}
	return s.db.Batch(fn)
}

// decodeVM unmarshals the record uid from vms into vm.
func decodeVM(vms *bolt.Bucket, uid []byte, vm *types.MicroVM) error {
	data := vms.Get(uid)
	if data == nil {
		return fmt.Errorf("microvm %s not found: %w", uid, errdefs.ErrNotFound)
	}
	if err := proto.Unmarshal(data, vm); err != nil {
		return fmt.Errorf("decode microvm %s: %w", uid, err)
	}
	return nil
}

// keysOf returns the uid and name index key of vm, checking that they are
// usable as keys.
func keysOf(vm *types.MicroVM) (string, []byte, error) {
	spec := vm.GetSpec()
	uid := spec.GetUid()
	switch {
	case spec == nil:
		return "", nil, fmt.Errorf("microvm has no spec: %w", errdefs.ErrInvalidArgument)
	case uid == "":
		return "", nil, fmt.Errorf("microvm %s/%s has no uid: %w", spec.GetNamespace(), spec.GetId(), errdefs.ErrInvalidArgument)
	case spec.GetNamespace() == "" || spec.GetId() == "":
		return "", nil, fmt.Errorf("microvm %s: namespace and name are required: %w", uid, errdefs.ErrInvalidArgument)
	case strings.IndexByte(spec.GetNamespace(), keySep) >= 0 || strings.IndexByte(spec.GetId(), keySep) >= 0:
		return "", nil, fmt.Errorf("microvm %s: namespace and name must not contain NUL: %w", uid, errdefs.ErrInvalidArgument)
	}
	return uid, nameKey(spec.GetNamespace(), spec.GetId()), nil
}

// nameKey is the name index key of namespace/name.
func nameKey(namespace, name string) []byte {
	k := make([]byte, 0, len(namespace)+1+len(name))
	k = append(k, namespace...)
	k = append(k, keySep)
	return append(k, name...)
}
