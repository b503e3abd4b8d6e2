// Package e2e runs flintlockd as operators do — a separate process talking
// to a real containerd, pulling from a real registry on loopback and booting
// real guests under QEMU — and drives it through its gRPC API, its HTTP
// gateway and the fl command line. The environment and the daemon handle
// come from test/framework.
package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/test/framework"
)

// env is what TestMain set up for every test.
var env *framework.Env

func TestMain(m *testing.M) {
	os.Exit(setup(m))
}

func setup(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: SKIPPED: must run as root (mounts, containerd, QEMU)")
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	// Unix socket paths are short: keep the scratch folder near /tmp.
	dir, err := os.MkdirTemp("", "lm-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	env, err = framework.Setup(ctx, framework.Options{Dir: dir})
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e set-up: %v\n", err)
		return 1
	}
	defer env.Close()
	return m.Run()
}

// daemon is one flintlockd process bound to the test that started it: its
// helpers fail the test instead of returning errors.
type daemon struct {
	*framework.Daemon
	t *testing.T
}

// startDaemon starts flintlockd with its own state folder; extra flags are
// appended. The daemon and everything it created are removed at the end.
func startDaemon(t *testing.T, extra ...string) *daemon {
	t.Helper()
	return &daemon{Daemon: framework.StartDaemon(t, env, extra...), t: t}
}

// start restarts the daemon after kill.
func (d *daemon) start() {
	d.t.Helper()
	if err := d.Start(context.Background()); err != nil {
		d.t.Fatal(err)
	}
}

// kill ends flintlockd with SIGKILL, as a crash would.
func (d *daemon) kill() { d.Kill() }

// spec is a VM booting the test kernel, initrd and root image, whose
// user-data prints marker on the console.
func spec(name, marker string) *types.MicroVMSpec {
	ud := "#!/bin/sh\necho " + marker + "\n"
	root := env.Images.Root
	return &types.MicroVMSpec{
		Id:         name,
		Namespace:  "e2e",
		Vcpu:       1,
		MemoryInMb: 256,
		Labels:     map[string]string{"suite": "e2e"},
		Kernel:     &types.Kernel{Image: env.Images.Kernel},
		Initrd:     &types.Initrd{Image: env.Images.Initrd},
		RootVolume: &types.Volume{Id: "root", Source: &types.VolumeSource{ContainerSource: &root}},
		Metadata: map[string]string{
			"user-data": base64.StdEncoding.EncodeToString([]byte(ud)),
		},
	}
}

// waitState polls Get until the VM reaches want (FAILED ends the wait early
// unless wanted).
func (d *daemon) waitState(uid string, want types.MicroVMStatus_MicroVMState, timeout time.Duration) *types.MicroVM {
	d.t.Helper()
	vm, err := d.WaitState(uid, want, timeout)
	if err != nil {
		d.t.Fatal(err)
	}
	return vm
}

// waitGone polls Get until the VM is NotFound.
func (d *daemon) waitGone(uid string, timeout time.Duration) {
	d.t.Helper()
	if err := d.WaitGone(uid, timeout); err != nil {
		d.t.Fatal(err)
	}
}

func (d *daemon) vmDir(vm *types.MicroVM) string { return d.VMDir(vm) }

// waitConsole waits until the VM's console log holds text.
func (d *daemon) waitConsole(vm *types.MicroVM, text string, timeout time.Duration) {
	d.t.Helper()
	if err := d.WaitConsole(vm, text, timeout); err != nil {
		d.t.Fatal(err)
	}
}

// assertNothingLeft checks that the VM left no process, file, lease,
// snapshot or mount behind.
func (d *daemon) assertNothingLeft(vm *types.MicroVM) {
	d.t.Helper()
	d.AssertNothingLeft(d.t, vm)
}

// vmmProcesses lists the pids of processes whose command line names uid.
func vmmProcesses(uid string) []int { return framework.VMMProcesses(uid) }

func tail(s string, n int) string { return framework.Tail(s, n) }
