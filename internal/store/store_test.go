package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// newVM returns a realistic record: the size of what the server stores.
func newVM(uid, namespace, name string) *types.MicroVM {
	img := "liquidmetal/capmvm-kubernetes:1.31.1"
	kfile := "boot/vmlinux"
	mac := "aa:bb:cc:dd:ee:01"
	prov := "qemu"
	return &types.MicroVM{
		Spec: &types.MicroVMSpec{
			Id:         name,
			Namespace:  namespace,
			Uid:        &uid,
			Labels:     map[string]string{"cluster": "c1", "role": "worker"},
			Vcpu:       2,
			MemoryInMb: 2048,
			Provider:   &prov,
			Kernel: &types.Kernel{
				Image:            "liquidmetal/kernel-bin:6.1",
				Filename:         &kfile,
				Cmdline:          map[string]string{"console": "ttyS0", "quiet": ""},
				AddNetworkConfig: true,
			},
			RootVolume: &types.Volume{Id: "root", Source: &types.VolumeSource{ContainerSource: &img}},
			Interfaces: []*types.NetworkInterface{
				{DeviceId: "eth1", Type: types.NetworkInterface_TAP, GuestMac: &mac},
			},
			Metadata: map[string]string{
				"meta-data": "aW5zdGFuY2VfaWQ6IG5zMS9tdm0wCmxvY2FsX2hvc3RuYW1lOiBtdm0wCg==",
				"user-data": "I2Nsb3VkLWNvbmZpZwpmaW5hbF9tZXNzYWdlOiBib290ZWQK",
			},
			CreatedAt: timestamppb.New(time.Unix(1700000000, 0)),
			UpdatedAt: timestamppb.New(time.Unix(1700000000, 0)),
		},
		Status: &types.MicroVMStatus{State: types.MicroVMStatus_PENDING},
	}
}

func openTemp(t testing.TB) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state", "flintlock.db")
	s, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, path
}

// checkConsistency walks both buckets: every record decodes and is stored
// under its own uid, and the name index and the records agree both ways.
// It returns the number of records.
func checkConsistency(t testing.TB, s *Store) int {
	t.Helper()
	n := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		vms, names := tx.Bucket(bucketVMs), tx.Bucket(bucketNames)
		if err := vms.ForEach(func(k, v []byte) error {
			n++
			var vm types.MicroVM
			if err := proto.Unmarshal(v, &vm); err != nil {
				return fmt.Errorf("record %s does not decode: %v", k, err)
			}
			if vm.GetSpec().GetUid() != string(k) {
				return fmt.Errorf("record under %s has uid %q", k, vm.GetSpec().GetUid())
			}
			if vm.GetVersion() < 1 {
				return fmt.Errorf("record %s has version %d", k, vm.GetVersion())
			}
			idx := names.Get(nameKey(vm.Spec.Namespace, vm.Spec.Id))
			if !bytes.Equal(idx, k) {
				return fmt.Errorf("record %s (%s/%s) has index entry %q", k, vm.Spec.Namespace, vm.Spec.Id, idx)
			}
			return nil
		}); err != nil {
			return err
		}
		return names.ForEach(func(k, uid []byte) error {
			data := vms.Get(uid)
			if data == nil {
				return fmt.Errorf("index entry %q points at missing record %s", k, uid)
			}
			var vm types.MicroVM
			if err := proto.Unmarshal(data, &vm); err != nil {
				return err
			}
			if !bytes.Equal(nameKey(vm.Spec.Namespace, vm.Spec.Id), k) {
				return fmt.Errorf("index entry %q points at %s which is %s/%s", k, uid, vm.Spec.Namespace, vm.Spec.Id)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatalf("store inconsistent: %v", err)
	}
	return n
}

func names(vms []*types.MicroVM) []string {
	out := make([]string, len(vms))
	for i, vm := range vms {
		out[i] = vm.Spec.Namespace + "/" + vm.Spec.Id
	}
	return out
}

func ptr[T any](v T) *T { return &v }

func TestCRUD(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)

	vm := newVM("01UID", "ns1", "vm1")
	vm.Version = 42 // Create resets it
	if err := s.Create(ctx, vm); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if vm.Version != 1 {
		t.Errorf("Create set version %d, want 1", vm.Version)
	}

	got, err := s.Get(ctx, "01UID")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if !proto.Equal(got, vm) {
		t.Errorf("Get = %v, want %v", got, vm)
	}
	byName, err := s.GetByName(ctx, "ns1", "vm1")
	if err != nil || !proto.Equal(byName, vm) {
		t.Errorf("GetByName = %v, %v", byName, err)
	}

	upd, err := s.Update(ctx, "01UID", func(vm *types.MicroVM) error {
		vm.Status.State = types.MicroVMStatus_CREATED
		vm.Status.VmmPid = 1234
		return nil
	})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	if upd.Version != 2 || upd.Status.State != types.MicroVMStatus_CREATED {
		t.Errorf("Update returned version %d state %v", upd.Version, upd.Status.State)
	}
	got, _ = s.Get(ctx, "01UID")
	if !proto.Equal(got, upd) {
		t.Errorf("after Update Get = %v, want %v", got, upd)
	}

	if err := s.Delete(ctx, "01UID"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := s.Get(ctx, "01UID"); !errdefs.IsNotFound(err) {
		t.Errorf("Get after Delete: %v, want NotFound", err)
	}
	if _, err := s.GetByName(ctx, "ns1", "vm1"); !errdefs.IsNotFound(err) {
		t.Errorf("GetByName after Delete: %v, want NotFound", err)
	}
	if n := checkConsistency(t, s); n != 0 {
		t.Errorf("%d records left", n)
	}
}

func TestErrors(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	if err := s.Create(ctx, newVM("U1", "ns", "a")); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		err     func() error
		is      func(error) bool
		message string
	}{
		{"same name", func() error { return s.Create(ctx, newVM("U2", "ns", "a")) }, errdefs.IsAlreadyExists, "ns/a"},
		{"same uid", func() error { return s.Create(ctx, newVM("U1", "ns", "b")) }, errdefs.IsAlreadyExists, "U1"},
		{"no uid", func() error {
			vm := newVM("", "ns", "c")
			vm.Spec.Uid = nil
			return s.Create(ctx, vm)
		}, errdefs.IsInvalidArgument, "uid"},
		{"no spec", func() error { return s.Create(ctx, &types.MicroVM{}) }, errdefs.IsInvalidArgument, "spec"},
		{"NUL in name", func() error { return s.Create(ctx, newVM("U3", "ns", "a\x00b")) }, errdefs.IsInvalidArgument, "NUL"},
		{"get missing", func() error { _, err := s.Get(ctx, "NOPE"); return err }, errdefs.IsNotFound, "microvm NOPE not found"},
		{"get by missing name", func() error { _, err := s.GetByName(ctx, "ns", "zz"); return err }, errdefs.IsNotFound, "ns/zz not found"},
		{"update missing", func() error {
			_, err := s.Update(ctx, "NOPE", func(*types.MicroVM) error { return nil })
			return err
		}, errdefs.IsNotFound, "not found"},
		{"update renames", func() error {
			_, err := s.Update(ctx, "U1", func(vm *types.MicroVM) error { vm.Spec.Id = "other"; return nil })
			return err
		}, errdefs.IsInvalidArgument, "cannot change"},
		{"update fn fails", func() error {
			_, err := s.Update(ctx, "U1", func(vm *types.MicroVM) error {
				vm.Status.Retry = 9
				return fmt.Errorf("no: %w", errdefs.ErrFailedPrecondition)
			})
			return err
		}, errdefs.IsFailedPrecondition, "no"},
		{"cancelled context", func() error {
			c, cancel := context.WithCancel(ctx)
			cancel()
			_, err := s.Get(c, "U1")
			return err
		}, func(err error) bool { return errors.Is(err, context.Canceled) }, "canceled"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.err()
			if err == nil || !tc.is(err) {
				t.Fatalf("got %v", err)
			}
			if !bytes.Contains([]byte(err.Error()), []byte(tc.message)) {
				t.Errorf("error %q does not mention %q", err, tc.message)
			}
		})
	}

	// Failed operations changed nothing.
	vm, err := s.Get(ctx, "U1")
	if err != nil {
		t.Fatal(err)
	}
	if vm.Version != 1 || vm.Status.Retry != 0 || vm.Spec.Id != "a" {
		t.Errorf("record changed by failed calls: %v", vm)
	}
	if err := s.Delete(ctx, "NOPE"); err != nil {
		t.Errorf("Delete of missing uid: %v", err)
	}
	if n := checkConsistency(t, s); n != 1 {
		t.Errorf("%d records, want 1", n)
	}
}

func TestDeleteAndRecreate(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	if err := s.Create(ctx, newVM("OLD", "ns", "vm")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "OLD"); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, newVM("NEW", "ns", "vm")); err != nil {
		t.Fatalf("re-create after delete: %v", err)
	}
	got, err := s.GetByName(ctx, "ns", "vm")
	if err != nil || got.Spec.GetUid() != "NEW" {
		t.Fatalf("GetByName = %v, %v; want uid NEW", got, err)
	}
	// Deleting the old uid again must not drop the new record's index.
	if err := s.Delete(ctx, "OLD"); err != nil {
		t.Fatal(err)
	}
	if n := checkConsistency(t, s); n != 1 {
		t.Errorf("%d records, want 1", n)
	}
	if _, err := s.GetByName(ctx, "ns", "vm"); err != nil {
		t.Errorf("index lost: %v", err)
	}
}

func TestList(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	// Namespaces chosen so that plain string concatenation would sort
	// wrongly ("a-b/..." vs "a/...").
	for i, nn := range [][2]string{{"b", "x"}, {"a-b", "y"}, {"a", "z"}, {"a", "m"}, {"b", "m"}, {"ab", "m"}} {
		if err := s.Create(ctx, newVM(fmt.Sprintf("U%d", i), nn[0], nn[1])); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		namespace string
		name      *string
		want      []string
	}{
		{"", nil, []string{"a/m", "a/z", "a-b/y", "ab/m", "b/m", "b/x"}},
		{"a", nil, []string{"a/m", "a/z"}},
		{"b", nil, []string{"b/m", "b/x"}},
		{"a", ptr("z"), []string{"a/z"}},
		{"a", ptr("x"), []string{}},
		{"", ptr("m"), []string{"a/m", "ab/m", "b/m"}},
		{"nope", nil, []string{}},
	}
	for _, tc := range tests {
		name := "<nil>"
		if tc.name != nil {
			name = *tc.name
		}
		t.Run(tc.namespace+","+name, func(t *testing.T) {
			got, err := s.List(ctx, tc.namespace, tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if g := names(got); fmt.Sprint(g) != fmt.Sprint(tc.want) {
				t.Errorf("List = %v, want %v", g, tc.want)
			}
		})
	}
}

func TestReopen(t *testing.T) {
	ctx := context.Background()
	s, path := openTemp(t)
	var want []*types.MicroVM
	for i := range 20 {
		vm := newVM(fmt.Sprintf("U%02d", i), "ns", fmt.Sprintf("vm%02d", i))
		if err := s.Create(ctx, vm); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			var err error
			vm, err = s.Update(ctx, vm.Spec.GetUid(), func(vm *types.MicroVM) error {
				vm.Status.State = types.MicroVMStatus_FAILED
				vm.Status.FailureMessage = "boom"
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		want = append(want, vm)
	}

	// A second opener of a file in use fails fast and says why.
	start := time.Now()
	_, err := Open(path)
	if err == nil || !errdefs.IsUnavailable(err) {
		t.Errorf("second Open = %v, want Unavailable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("second Open took %v", d)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s2.Close()
	got, err := s2.List(ctx, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("reopened store has %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("record %d after reopen = %v, want %v", i, got[i], want[i])
		}
	}
	checkConsistency(t, s2)
}

// TestConcurrentUpdate: concurrent read-modify-writes of one record are
// serialised: none is lost and every caller sees a distinct version.
func TestConcurrentUpdate(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	if err := s.Create(ctx, newVM("U", "ns", "vm")); err != nil {
		t.Fatal(err)
	}
	const workers, each = 16, 10
	var mu sync.Mutex
	seen := map[int32]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				vm, err := s.Update(ctx, "U", func(vm *types.MicroVM) error {
					vm.Status.Retry++
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if seen[vm.Version] {
					errs <- fmt.Errorf("version %d returned twice", vm.Version)
				}
				seen[vm.Version] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	vm, err := s.Get(ctx, "U")
	if err != nil {
		t.Fatal(err)
	}
	if vm.Status.Retry != workers*each || vm.Version != 1+workers*each {
		t.Errorf("after %d updates: retry %d version %d", workers*each, vm.Status.Retry, vm.Version)
	}
}

// TestConcurrentCreate: many concurrent creates all land (through batched
// commits), and of several creates of one name exactly one wins.
func TestConcurrentCreate(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	const n = 200
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Create(ctx, newVM(fmt.Sprintf("U%03d", i), "ns", fmt.Sprintf("vm%03d", i)))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("create %d: %v", i, err)
		}
	}

	won := make(chan string, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.Create(ctx, newVM(fmt.Sprintf("DUP%02d", i), "ns", "same"))
			switch {
			case err == nil:
				won <- fmt.Sprintf("DUP%02d", i)
			case !errdefs.IsAlreadyExists(err):
				t.Errorf("duplicate create: %v", err)
			}
		}()
	}
	wg.Wait()
	close(won)
	var winners []string
	for w := range won {
		winners = append(winners, w)
	}
	if len(winners) != 1 {
		t.Fatalf("%d creates of ns/same succeeded: %v", len(winners), winners)
	}
	if vm, err := s.GetByName(ctx, "ns", "same"); err != nil || vm.Spec.GetUid() != winners[0] {
		t.Errorf("ns/same = %v, %v; want uid %s", vm, err, winners[0])
	}
	if got := checkConsistency(t, s); got != n+1 {
		t.Errorf("%d records, want %d", got, n+1)
	}
	all, _ := s.List(ctx, "ns", nil)
	if !sort.SliceIsSorted(all, func(i, j int) bool { return all[i].Spec.Id < all[j].Spec.Id }) {
		t.Error("List not sorted by name")
	}
}

func FuzzRecordRoundTrip(f *testing.F) {
	for _, vm := range []*types.MicroVM{newVM("U1", "ns", "vm"), {Spec: &types.MicroVMSpec{Id: "a", Namespace: "b"}}} {
		data, err := proto.Marshal(vm)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte{})
	f.Add([]byte{0x12, 0x03, 0x0a, 0x01, 0x00}) // spec.id = "\x00"

	s, _ := openTemp(f)
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, data []byte) {
		vm := &types.MicroVM{}
		if err := proto.Unmarshal(data, vm); err != nil {
			return
		}
		if vm.Spec == nil {
			vm.Spec = &types.MicroVMSpec{}
		}
		if vm.Spec.GetUid() == "" {
			vm.Spec.Uid = ptr("FUZZ")
		}
		if vm.Spec.Id == "" {
			vm.Spec.Id = "vm"
		}
		if vm.Spec.Namespace == "" {
			vm.Spec.Namespace = "ns"
		}
		want := proto.Clone(vm).(*types.MicroVM)
		want.Version = 1
		err := s.Create(ctx, vm)
		if bytes.IndexByte([]byte(vm.Spec.Id+vm.Spec.Namespace), 0) >= 0 {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("NUL in key: Create = %v, want InvalidArgument", err)
			}
			return
		}
		if err != nil {
			t.Fatalf("Create: %v", err)
		}
		uid := vm.Spec.GetUid()
		t.Cleanup(func() { _ = s.Delete(ctx, uid) })
		got, err := s.Get(ctx, uid)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		if !proto.Equal(got, want) {
			t.Fatalf("round trip changed the record:\n got %v\nwant %v", got, want)
		}
		byName, err := s.GetByName(ctx, want.Spec.Namespace, want.Spec.Id)
		if err != nil || !proto.Equal(byName, want) {
			t.Fatalf("GetByName = %v, %v", byName, err)
		}
		if err := s.Delete(ctx, uid); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, uid); !errdefs.IsNotFound(err) {
			t.Fatalf("Get after Delete = %v", err)
		}
	})
}

func BenchmarkList1000(b *testing.B) {
	ctx := context.Background()
	s, _ := openTemp(b)
	var wg sync.WaitGroup
	for i := range 1000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Create(ctx, newVM(fmt.Sprintf("U%04d", i), fmt.Sprintf("ns%d", i%4), fmt.Sprintf("vm%04d", i))); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		vms, err := s.List(ctx, "", nil)
		if err != nil || len(vms) != 1000 {
			b.Fatalf("List = %d, %v", len(vms), err)
		}
	}
}

func BenchmarkCreate(b *testing.B) {
	ctx := context.Background()
	s, _ := openTemp(b)
	// Counters live outside the sub-benchmarks, which run more than once.
	var i int
	var mu sync.Mutex
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			i++
			if err := s.Create(ctx, newVM(fmt.Sprintf("S%d", i), "serial", fmt.Sprintf("vm%d", i))); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "creates/s")
	})
	b.Run("parallel", func(b *testing.B) {
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				mu.Lock()
				i++
				n := i
				mu.Unlock()
				if err := s.Create(ctx, newVM(fmt.Sprintf("P%d", n), "parallel", fmt.Sprintf("vm%d", n))); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "creates/s")
	})
}
