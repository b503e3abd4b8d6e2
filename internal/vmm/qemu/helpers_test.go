package qemu

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
	"github.com/liquidmetal-go/liquidmetal/internal/testimages"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/vmmtest"
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

// newProvider returns a provider logging into the test; Accel defaults to
// TCG (the probe has a test of its own).
func newProvider(t testing.TB, opts Options) (*Provider, *vmmtest.LogBuf) {
	t.Helper()
	if opts.Accel == "" {
		opts.Accel = AccelTCG
	}
	var lb *vmmtest.LogBuf
	opts.Logger, lb = vmmtest.Logger(t)
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
	vm := vmmtest.NewVM(t, p, func(uid string) int { return vmmCount(t, p, uid) })
	vm.VCPU, vm.MemoryMB = 1, 256
	vm.KernelPath, vm.InitrdPath = a.Vmlinuz, a.Initrd
	return vm
}

// vmmCount counts the live VMM processes of uid.
func vmmCount(t testing.TB, p *Provider, uid string) int {
	t.Helper()
	return vmmtest.CountProcs(t, func(argv []string) bool { return argvUID(argv, p.binary) == uid })
}
