// Package vmmtest owns the test support the VMM providers' tests share:
// building the fake VMM binaries of a package's testdata, a provider log
// echoed into the test, VM fixtures (a fake kernel, blank disks, a fresh
// VM stopped and checked gone when the test ends), polling helpers, and
// the request journal the fake REST VMMs write with its comparison
// against hand-written expectations. Only tests import it.
package vmmtest

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// BuildFakes builds each fake of fakes (binary name -> package path,
// relative to the test's package) into a fresh temporary folder, static
// (a jailed fake runs in an empty chroot). It is for TestMain: the caller
// runs cleanup once the tests are done.
func BuildFakes(fakes map[string]string) (dir string, cleanup func(), err error) {
	dir, err = os.MkdirTemp("", "lm-fake-vmm-")
	if err != nil {
		return "", nil, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	for name, pkg := range fakes {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			cleanup()
			return "", nil, fmt.Errorf("build %s: %w\n%s", pkg, err, out)
		}
	}
	return dir, cleanup, nil
}

// LogBuf collects a provider's log and echoes it to the test log while the
// test runs.
type LogBuf struct {
	mu   sync.Mutex
	b    bytes.Buffer
	t    testing.TB
	done bool
}

func (l *LogBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Write(p)
	if !l.done {
		l.t.Logf("%s", bytes.TrimSpace(p))
	}
	return len(p), nil
}

// String returns everything logged so far.
func (l *LogBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Logger returns a debug-level logger writing into a LogBuf that echoes to
// t until the test ends (a provider may log after that).
func Logger(t testing.TB) (*slog.Logger, *LogBuf) {
	lb := &LogBuf{t: t}
	t.Cleanup(func() { lb.mu.Lock(); lb.done = true; lb.mu.Unlock() })
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// FakeELF writes a file that starts like an ELF vmlinux.
func FakeELF(t testing.TB, path string) {
	t.Helper()
	if err := os.WriteFile(path, append([]byte("\x7fELF\x02\x01\x01"), make([]byte, 4089)...), 0o644); err != nil {
		t.Fatal(err)
	}
}

// BlankFile writes a sparse file of size bytes.
func BlankFile(t testing.TB, path string, size int64) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

// NewVM describes a VM of the test (fresh uid, the test's name) in a fresh
// folder, without kernel or disks. Its VMM is stopped with p when the test
// ends, and count (the live VMM processes of the VM) must then be 0.
func NewVM(t testing.TB, p vmm.Provider, count func(uid string) int) vmm.VM {
	t.Helper()
	vm := vmm.VM{
		UID:       ulid.Make().String(),
		Namespace: "test",
		Name:      strings.ReplaceAll(t.Name(), "/", "-"),
		Dir:       t.TempDir(),
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := p.Stop(ctx, vm.UID, vm.Dir, 0); err != nil {
			t.Errorf("cleanup stop: %v", err)
		}
		if n := count(vm.UID); n != 0 {
			t.Errorf("%d vmm processes left for %s", n, vm.UID)
		}
	})
	return vm
}

// DiskVM is NewVM with a fake ELF kernel, an 8 MiB root volume and a
// 1 MiB read-only cidata disk (raw) in the VM folder, 2 vCPUs and 256 MiB.
func DiskVM(t testing.TB, p vmm.Provider, count func(uid string) int) vmm.VM {
	t.Helper()
	vm := NewVM(t, p, count)
	vm.VCPU, vm.MemoryMB = 2, 256
	vm.KernelPath = filepath.Join(vm.Dir, "kernel")
	vm.Disks = []vmm.Disk{
		{ID: "root", Path: filepath.Join(vm.Dir, "root.img"), Format: "raw"},
		{ID: "cidata", Path: filepath.Join(vm.Dir, "cidata.img"), ReadOnly: true, Format: "raw"},
	}
	FakeELF(t, vm.KernelPath)
	BlankFile(t, vm.Disks[0].Path, 8<<20)
	BlankFile(t, vm.Disks[1].Path, 1<<20)
	return vm
}

// CountProcs counts the live processes whose argument vector matches.
func CountProcs(t testing.TB, match func(argv []string) bool) int {
	t.Helper()
	pids, err := process.Find(match)
	if err != nil {
		t.Fatal(err)
	}
	return len(pids)
}

// Eventually polls cond every 20ms until it holds or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FileContains reports whether the file at path can be read and holds s.
func FileContains(path, s string) bool {
	b, err := os.ReadFile(path)
	return err == nil && bytes.Contains(b, []byte(s))
}

// Ctx returns a context that ends after d or with the test.
func Ctx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Closed reports whether ch is closed within d.
func Closed(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}
