package volumes

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// The devmapper method was NOT run against a real thin pool here: the
// test kernels have no device-mapper thin target. These tests drive the
// whole create / reboot / delete / GC flow through a recording Runner
// that models a thin pool (thin ids, active devices and their tables,
// suspended origins) and refuses what the kernel would refuse, and check
// the exact command sequence and tables.

// fakePool acts out dmsetup and dd against an in-memory thin pool.
type fakePool struct {
	t    *testing.T
	name string

	mu        sync.Mutex
	calls     [][]string
	thins     map[uint32]bool   // thin ids in the pool's metadata
	devices   map[string]string // active device -> table
	suspended map[string]bool
	// failOn makes the first command starting with this prefix fail.
	failOn string
}

func newFakePool(t *testing.T, name string) *fakePool {
	return &fakePool{t: t, name: name, thins: map[uint32]bool{}, devices: map[string]string{}, suspended: map[string]bool{}}
}

func (f *fakePool) run(_ context.Context, argv []string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, append([]string(nil), argv...))
	line := strings.Join(argv, " ")
	if f.failOn != "" && strings.HasPrefix(line, f.failOn) {
		f.failOn = ""
		return []byte("injected failure"), fmt.Errorf("%s: exit status 1: injected failure", line)
	}
	fail := func(msg string) ([]byte, error) { return []byte(msg), fmt.Errorf("%s: exit status 1", line) }
	pool := "/dev/mapper/" + f.name
	switch {
	case argv[0] == "dd":
		var in, out string
		for _, a := range argv[1:] {
			if v, ok := strings.CutPrefix(a, "if="); ok {
				in = v
			}
			if v, ok := strings.CutPrefix(a, "of="); ok {
				out = v
			}
		}
		if _, err := os.Stat(in); err != nil {
			return fail(err.Error())
		}
		if _, ok := f.devices[strings.TrimPrefix(out, "/dev/mapper/")]; !ok {
			return fail("dd: failed to open '" + out + "': No such file or directory")
		}
		return nil, nil
	case argv[0] != "dmsetup":
		return fail("unexpected program")
	}
	switch argv[1] {
	case "status":
		if argv[2] != f.name {
			return fail("Device does not exist.\nCommand failed.")
		}
		return []byte("0 20971520 thin-pool 1 94/4096 0/163840 - rw discard_passdown queue_if_no_space - 1024\n"), nil
	case "info":
		name := argv[len(argv)-1]
		if _, ok := f.devices[name]; !ok {
			return fail("Device does not exist.\nCommand failed.")
		}
		return []byte(name + "\n"), nil
	case "message":
		if argv[2] != pool || argv[3] != "0" {
			return fail("bad message target")
		}
		m := strings.Fields(argv[4])
		ids := make([]uint32, len(m)-1)
		for i, s := range m[1:] {
			n, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return fail("bad id")
			}
			ids[i] = uint32(n)
		}
		switch m[0] {
		case "create_thin":
			if f.thins[ids[0]] {
				return fail("device-mapper: message ioctl failed: File exists")
			}
			f.thins[ids[0]] = true
		case "create_snap":
			if f.thins[ids[0]] || !f.thins[ids[1]] {
				return fail("device-mapper: message ioctl failed")
			}
			for dev, table := range f.devices {
				if strings.HasSuffix(table, " "+strconv.Itoa(int(ids[1]))) && !f.suspended[dev] {
					return fail("device-mapper: the active origin must be suspended")
				}
			}
			f.thins[ids[0]] = true
		case "delete":
			if !f.thins[ids[0]] {
				return fail("device-mapper: message ioctl failed: No data available")
			}
			for _, table := range f.devices {
				if strings.HasSuffix(table, " "+strconv.Itoa(int(ids[0]))) {
					return fail("device-mapper: message ioctl failed: Device or resource busy")
				}
			}
			delete(f.thins, ids[0])
		default:
			return fail("unknown message")
		}
		return nil, nil
	case "create":
		name, table := argv[2], argv[4]
		if argv[3] != "--table" {
			return fail("no table")
		}
		if _, ok := f.devices[name]; ok {
			return fail("device-mapper: create ioctl failed: Device or resource busy")
		}
		fl := strings.Fields(table)
		id, _ := strconv.ParseUint(fl[len(fl)-1], 10, 32)
		if len(fl) != 5 || fl[2] != "thin" || fl[3] != pool || !f.thins[uint32(id)] {
			return fail("device-mapper: reload ioctl failed: No data available")
		}
		f.devices[name] = table
		return nil, nil
	case "remove":
		name := argv[len(argv)-1]
		if _, ok := f.devices[name]; !ok {
			return fail("Device does not exist.")
		}
		delete(f.devices, name)
		return nil, nil
	case "suspend", "resume":
		if _, ok := f.devices[argv[2]]; !ok {
			return fail("Device does not exist.")
		}
		f.suspended[argv[2]] = argv[1] == "suspend"
		return nil, nil
	}
	return fail("unexpected dmsetup command")
}

// take returns the commands run since the last take.
func (f *fakePool) take() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func newDevmapperProvisioner(t *testing.T) (*Provisioner, *fakePool, string) {
	t.Helper()
	fp := newFakePool(t, "pool0")
	state := t.TempDir()
	p, err := NewProvisioner(ProvisionerOptions{Dir: filepath.Join(state, "volumes"), ThinPool: &ThinPool{Name: "pool0", Run: fp.run}})
	if err != nil {
		t.Fatal(err)
	}
	if p.Method() != MethodDevmapper {
		t.Fatalf("method %s with a thin pool", p.Method())
	}
	return p, fp, state
}

// writeBase is a BuildFunc writing a 3 MiB + 1 byte image.
func writeBase(ctx context.Context, dst string) error {
	return os.WriteFile(dst, make([]byte, 3<<20+1), 0o600)
}

// TestDevmapperFlowRecorded (not run on a real pool, see above): two VMs
// from one base, a reboot, both deletes and the GC of the base.
func TestDevmapperFlowRecorded(t *testing.T) {
	p, fp, state := newDevmapperProvisioner(t)
	ctx := context.Background()
	key := BaseKey{Digest: "sha256:abc"}
	base := filepath.Join(state, "volumes", "base", "abc-default.img")
	origin := "flintlock-base-abc-default"
	oid := itoa(DeviceID(origin))
	vmDir := func(n string) string {
		d := filepath.Join(state, "vm", n, "volumes")
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(d, "root.img")
	}
	dst1, dst2 := vmDir("one"), vmDir("two")
	name1, name2 := "flintlock-vm1-root", "flintlock-vm2-root"
	sid1, sid2 := itoa(DeviceID(name1)), itoa(DeviceID(name2))
	const table = " thin /dev/mapper/pool0 "
	sectors := "6145" // 3 MiB + 1 byte in 512-byte sectors, rounded up

	// First VM: the base's thin volume is created and filled, then
	// snapshotted.
	v, err := p.Volume(ctx, key, writeBase, dst1, VolumeOptions{RawOnly: true, Name: name1})
	if err != nil {
		t.Fatal(err)
	}
	if v.Method != MethodDevmapper || v.Path != dst1 || !v.BaseBuilt {
		t.Fatalf("volume %+v", v)
	}
	assertCmds(t, fp.take(), [][]string{
		{"dmsetup", "info", "-c", "--noheadings", "-o", "name", name1},
		{"dmsetup", "info", "-c", "--noheadings", "-o", "name", origin},
		{"dmsetup", "message", "/dev/mapper/pool0", "0", "create_thin " + oid},
		{"dmsetup", "create", origin, "--table", "0 " + sectors + table + oid},
		{"dd", "if=" + base, "of=/dev/mapper/" + origin, "bs=1M", "conv=sparse,fsync", "status=none"},
		{"dmsetup", "suspend", origin},
		{"dmsetup", "message", "/dev/mapper/pool0", "0", "create_snap " + sid1 + " " + oid},
		{"dmsetup", "resume", origin},
		{"dmsetup", "create", name1, "--table", "0 " + sectors + table + sid1},
	})
	if target, err := os.Readlink(dst1); err != nil || target != "/dev/mapper/"+name1 {
		t.Fatalf("VM volume link: %q, %v", target, err)
	}
	if !sameFile(t, base, filepath.Join(filepath.Dir(dst1), "root.base.img")) {
		t.Fatal("the VM folder holds no link of its base image")
	}

	// Second VM: a snapshot of the existing base volume only.
	if _, err := p.Volume(ctx, key, writeBase, dst2, VolumeOptions{RawOnly: true, Name: name2}); err != nil {
		t.Fatal(err)
	}
	assertCmds(t, fp.take(), [][]string{
		{"dmsetup", "info", "-c", "--noheadings", "-o", "name", name2},
		{"dmsetup", "info", "-c", "--noheadings", "-o", "name", origin},
		{"dmsetup", "suspend", origin},
		{"dmsetup", "message", "/dev/mapper/pool0", "0", "create_snap " + sid2 + " " + oid},
		{"dmsetup", "resume", origin},
		{"dmsetup", "create", name2, "--table", "0 " + sectors + table + sid2},
	})

	// Again (a reconcile pass): nothing to do.
	if _, err := p.Volume(ctx, key, writeBase, dst1, VolumeOptions{RawOnly: true, Name: name1}); err != nil {
		t.Fatal(err)
	}
	assertCmds(t, fp.take(), [][]string{{"dmsetup", "info", "-c", "--noheadings", "-o", "name", name1}})

	// A host reboot: devices are gone, the pool keeps the thin volumes.
	// The VM's snapshot is only activated again, never re-snapshotted.
	fp.mu.Lock()
	fp.devices = map[string]string{}
	fp.mu.Unlock()
	if _, err := p.Volume(ctx, key, writeBase, dst1, VolumeOptions{RawOnly: true, Name: name1}); err != nil {
		t.Fatal(err)
	}
	assertCmds(t, fp.take(), [][]string{
		{"dmsetup", "info", "-c", "--noheadings", "-o", "name", name1},
		{"dmsetup", "create", name1, "--table", "0 " + sectors + table + sid1},
	})

	// GC keeps the base (both VMs link to it) even past its grace.
	if removed, err := p.GC(0); err != nil || len(removed) != 0 {
		t.Fatalf("GC with VMs: %v, %v", removed, err)
	}
	assertCmds(t, fp.take(), nil)

	// Delete the first VM: its device is removed and its blocks freed.
	if err := p.Release(ctx, dst1, name1); err != nil {
		t.Fatal(err)
	}
	assertCmds(t, fp.take(), [][]string{
		{"dmsetup", "info", "-c", "--noheadings", "-o", "name", name1},
		{"dmsetup", "remove", "--retry", name1},
		{"dmsetup", "message", "/dev/mapper/pool0", "0", "delete " + sid1},
	})
	for _, f := range []string{dst1, filepath.Join(filepath.Dir(dst1), "root.base.img")} {
		if _, err := os.Lstat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after release: %v", f, err)
		}
	}
	// Releasing again is a no-op.
	if err := p.Release(ctx, dst1, name1); err != nil {
		t.Fatal(err)
	}
	assertCmds(t, fp.take(), nil)

	// The second VM's snapshot device was never activated after the
	// reboot: its thin volume is deleted all the same.
	if err := p.Release(ctx, dst2, name2); err != nil {
		t.Fatal(err)
	}
	assertCmds(t, fp.take(), [][]string{
		{"dmsetup", "info", "-c", "--noheadings", "-o", "name", name2},
		{"dmsetup", "message", "/dev/mapper/pool0", "0", "delete " + sid2},
	})

	// Nobody uses the base any more: GC removes its thin volume (not
	// active since the reboot) and the file.
	if removed, err := p.GC(0); err != nil || len(removed) != 1 {
		t.Fatalf("GC: %v, %v", removed, err)
	}
	assertCmds(t, fp.take(), [][]string{
		{"dmsetup", "info", "-c", "--noheadings", "-o", "name", origin},
		{"dmsetup", "message", "/dev/mapper/pool0", "0", "delete " + oid},
	})
	left, _ := filepath.Glob(filepath.Join(state, "volumes", "base", "*"))
	if len(left) != 0 {
		t.Errorf("base folder after GC: %v", left)
	}
	if len(fp.thins) != 0 || len(fp.devices) != 0 {
		t.Errorf("pool after everything was deleted: thins %v, devices %v", fp.thins, fp.devices)
	}
}

// TestDevmapperBaseGCActiveRecorded (not run on a real pool): an active
// base device is removed before its thin volume is deleted.
func TestDevmapperBaseGCActiveRecorded(t *testing.T) {
	p, fp, state := newDevmapperProvisioner(t)
	ctx := context.Background()
	dst := filepath.Join(state, "root.img")
	if _, err := p.Volume(ctx, BaseKey{Digest: "sha256:def"}, writeBase, dst, VolumeOptions{Name: "flintlock-x-root"}); err != nil {
		t.Fatal(err)
	}
	// Without the grace period passed, nothing goes.
	if err := p.Release(ctx, dst, "flintlock-x-root"); err != nil {
		t.Fatal(err)
	}
	fp.take()
	if removed, err := p.GC(time.Hour); err != nil || len(removed) != 0 {
		t.Fatalf("GC within grace: %v, %v", removed, err)
	}
	assertCmds(t, fp.take(), nil)
	if _, err := p.GC(0); err != nil {
		t.Fatal(err)
	}
	origin := "flintlock-base-def-default"
	assertCmds(t, fp.take(), [][]string{
		{"dmsetup", "info", "-c", "--noheadings", "-o", "name", origin},
		{"dmsetup", "remove", "--retry", origin},
		{"dmsetup", "message", "/dev/mapper/pool0", "0", "delete " + itoa(DeviceID(origin))},
	})
	if len(fp.thins) != 0 || len(fp.devices) != 0 {
		t.Errorf("pool after GC: thins %v, devices %v", fp.thins, fp.devices)
	}
}

// TestDevmapperRollbackRecorded (not run on a real pool): failures leave
// no half-made thin volume behind, the origin is always resumed, and the
// next attempt succeeds.
func TestDevmapperRollbackRecorded(t *testing.T) {
	p, fp, state := newDevmapperProvisioner(t)
	ctx := context.Background()
	key := BaseKey{Digest: "sha256:abc"}
	origin := "flintlock-base-abc-default"
	oid := itoa(DeviceID(origin))
	dst := filepath.Join(state, "root.img")
	name := "flintlock-vm-root"
	sid := itoa(DeviceID(name))

	// dd fails: the base device is removed and its thin volume deleted.
	fp.failOn = "dd "
	if _, err := p.Volume(ctx, key, writeBase, dst, VolumeOptions{Name: name}); err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("Volume with dd failing: %v", err)
	}
	got := fp.take()
	assertCmds(t, got[len(got)-2:], [][]string{
		{"dmsetup", "remove", "--retry", origin},
		{"dmsetup", "message", "/dev/mapper/pool0", "0", "delete " + oid},
	})
	if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("volume link after a failure: %v", err)
	}

	// create_snap fails: the origin is resumed.
	fp.failOn = "dmsetup message /dev/mapper/pool0 0 create_snap"
	if _, err := p.Volume(ctx, key, writeBase, dst, VolumeOptions{Name: name}); err == nil {
		t.Fatal("Volume with create_snap failing succeeded")
	}
	got = fp.take()
	assertCmds(t, got[len(got)-3:], [][]string{
		{"dmsetup", "suspend", origin},
		{"dmsetup", "message", "/dev/mapper/pool0", "0", "create_snap " + sid + " " + oid},
		{"dmsetup", "resume", origin},
	})

	// The snapshot's device cannot be set up: its thin volume is deleted.
	fp.failOn = "dmsetup create " + name
	if _, err := p.Volume(ctx, key, writeBase, dst, VolumeOptions{Name: name}); err == nil {
		t.Fatal("Volume with create failing succeeded")
	}
	got = fp.take()
	assertCmds(t, got[len(got)-2:], [][]string{
		{"dmsetup", "create", name, "--table", "0 6145 thin /dev/mapper/pool0 " + sid},
		{"dmsetup", "message", "/dev/mapper/pool0", "0", "delete " + sid},
	})
	if fp.thins[DeviceID(name)] {
		t.Fatal("snapshot thin volume left after a failed create")
	}

	// Then it works.
	if _, err := p.Volume(ctx, key, writeBase, dst, VolumeOptions{Name: name}); err != nil {
		t.Fatal(err)
	}
	if _, ok := fp.devices[name]; !ok {
		t.Fatal("no snapshot device")
	}
	if fp.suspended[origin] {
		t.Fatal("origin left suspended")
	}
}

// TestThinPoolCheckRecorded (not run on a real pool): the start-up check.
func TestThinPoolCheckRecorded(t *testing.T) {
	ctx := context.Background()
	fp := newFakePool(t, "pool0")
	if err := (&ThinPool{Name: "pool0", Run: fp.run}).Check(ctx); err != nil {
		t.Fatal(err)
	}
	assertCmds(t, fp.take(), [][]string{{"dmsetup", "status", "pool0"}})
	err := (&ThinPool{Name: "nopool", Run: fp.run}).Check(ctx)
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), `thin pool "nopool" is not usable`) {
		t.Fatalf("missing pool: %v", err)
	}
	notPool := func(context.Context, []string) ([]byte, error) { return []byte("0 2048 linear 8:0 0\n"), nil }
	if err := (&ThinPool{Name: "lin", Run: notPool}).Check(ctx); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "not a thin pool") {
		t.Fatalf("linear device: %v", err)
	}
	if err := (&ThinPool{Name: "a/b"}).Check(ctx); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("bad name: %v", err)
	}
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}
