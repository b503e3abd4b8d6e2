package qemu

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
	"github.com/liquidmetal-go/liquidmetal/internal/testimages"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

var (
	guestOnce sync.Once
	guestArt  *testimages.Artifacts
	guestErr  error
)

// guest returns the test guest (kernel, initrd, root tree), built once
// into <repo>/bin/cache/guest.
func guest(t testing.TB) *testimages.Artifacts {
	t.Helper()
	guestOnce.Do(func() {
		root, err := testenv.RepoRoot()
		if err != nil {
			guestErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		guestArt, guestErr = testimages.Build(ctx, filepath.Join(root, "bin", "cache", "guest"))
	})
	if guestErr != nil {
		t.Fatalf("guest artifacts: %v", guestErr)
	}
	return guestArt
}

// logBuf collects a provider's log and echoes it to the test log while the
// test runs.
type logBuf struct {
	mu   sync.Mutex
	b    bytes.Buffer
	t    testing.TB
	done bool
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Write(p)
	if !l.done {
		l.t.Logf("%s", bytes.TrimSpace(p))
	}
	return len(p), nil
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newProvider returns a provider logging into the test; Accel defaults to
// TCG (the probe has a test of its own).
func newProvider(t testing.TB, opts Options) (*Provider, *logBuf) {
	t.Helper()
	lb := &logBuf{t: t}
	t.Cleanup(func() { lb.mu.Lock(); lb.done = true; lb.mu.Unlock() })
	if opts.Accel == "" {
		opts.Accel = AccelTCG
	}
	opts.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return p, lb
}

// newVM describes a VM booting the test guest from its initrd, in a fresh
// folder. Its VMM is stopped (and checked gone) when the test ends.
func newVM(t testing.TB, p *Provider) vmm.VM {
	t.Helper()
	a := guest(t)
	vm := vmm.VM{
		UID:        ulid.Make().String(),
		Namespace:  "test",
		Name:       strings.ReplaceAll(t.Name(), "/", "-"),
		Dir:        t.TempDir(),
		VCPU:       1,
		MemoryMB:   256,
		KernelPath: a.Vmlinuz,
		InitrdPath: a.Initrd,
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := p.Stop(ctx, vm.UID, vm.Dir, 0); err != nil {
			t.Errorf("cleanup stop: %v", err)
		}
		if n := vmmCount(t, p, vm.UID); n != 0 {
			t.Errorf("%d vmm processes left for %s", n, vm.UID)
		}
	})
	return vm
}

// vmmCount counts the live VMM processes of uid.
func vmmCount(t testing.TB, p *Provider, uid string) int {
	t.Helper()
	pids, err := process.Find(func(argv []string) bool { return argvUID(argv, p.binary) == uid })
	if err != nil {
		t.Fatal(err)
	}
	return len(pids)
}

// eventually polls cond every 20ms until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fileContains(path, s string) bool {
	b, err := os.ReadFile(path)
	return err == nil && bytes.Contains(b, []byte(s))
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
