package cloudhypervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/vmmtest"
)

// fakeBin is where TestMain builds the stand-in for the cloud-hypervisor
// binary (testdata/fakecloudhypervisor): the real one cannot run on the
// test hosts.
var fakeBin string

func TestMain(m *testing.M) {
	dir, cleanup, err := vmmtest.BuildFakes(map[string]string{"cloud-hypervisor": "./testdata/fakecloudhypervisor"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fakeBin = dir
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// newProvider returns a provider running the fake cloud-hypervisor.
func newProvider(t testing.TB, opts Options) *Provider {
	t.Helper()
	if opts.Binary == "" {
		opts.Binary = filepath.Join(fakeBin, "cloud-hypervisor")
	}
	opts.Logger, _ = vmmtest.Logger(t)
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// newVM describes a VM with a root volume and a cidata disk in a fresh
// folder. Its VMM is stopped (and checked gone) when the test ends.
func newVM(t testing.TB, p *Provider) vmm.VM {
	t.Helper()
	vm := vmmtest.DiskVM(t, p, func(uid string) int { return vmmCount(t, p, uid) })
	vm.Cmdline = "console=ttyS0 root=/dev/vda rw"
	return vm
}

// vmmCount counts the live VMM processes of uid.
func vmmCount(t testing.TB, p *Provider, uid string) int {
	t.Helper()
	return vmmtest.CountProcs(t, func(argv []string) bool { return p.argvUID(argv) == uid })
}

// journal reads the requests the fake cloud-hypervisor received, but the
// GETs (readiness and status polls).
func journal(t testing.TB, path string) []vmmtest.Call {
	t.Helper()
	return vmmtest.ReadJournal(t, path, func(c vmmtest.Call) bool { return c.Method == "GET" })
}

// The virtiofsd names the provider's documents and daemons use
// (process.Virtiofsd's).
var (
	fsSocketName  = process.VirtiofsSocketName
	virtiofsdArgs = process.VirtiofsdArgs
	virtiofsdUID  = process.VirtiofsdUID
)
