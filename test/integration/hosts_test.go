package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/test/framework"
)

// setupHostEnv starts what the flintlock hosts share: containerd and a
// loopback registry holding the test kernel, initrd and root images
// (test/framework), in dir. It is stopped when the test ends.
func setupHostEnv(t *testing.T, dir string) *framework.Env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	env, err := framework.Setup(ctx, framework.Options{Dir: dir})
	if err != nil {
		t.Fatalf("flintlock host environment: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Close(); err != nil {
			t.Errorf("stop containerd and the registry: %v", err)
		}
	})
	return env
}

// macvtapParent creates the link the hosts' macvtap interfaces (the
// templates' default interface type) hang off: one end of a veth pair (this
// kernel has no dummy links), both ends deleted when the test ends.
func macvtapParent(t *testing.T) string {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "lmit" + hex.EncodeToString(b)
	for _, args := range [][]string{{"link", "add", name, "type", "veth", "peer", "name", name + "p"}, {"link", "set", name, "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
		if args[1] == "add" {
			t.Cleanup(func() {
				if out, err := exec.Command("ip", "link", "del", name).CombinedOutput(); err != nil {
					t.Errorf("ip link del %s: %v: %s", name, err, out)
				}
			})
		}
	}
	return name
}

// host is one flintlock host: a flintlockd with its own state folder and
// gRPC endpoint on loopback.
type host struct {
	name string
	*framework.Daemon
}

// startHost starts a flintlockd (QEMU provider, TCG) whose state folder is
// short (unix socket paths live in it). At the end of the test whatever VM
// it still has is deleted, the daemon stopped and any VMM process left
// killed.
func startHost(t *testing.T, env *framework.Env, name, stateDir string, extra ...string) *host {
	t.Helper()
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := framework.NewDaemon(env, stateDir, extra...)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatalf("flintlockd %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		derr := d.DeleteAll(ctx)
		d.Stop()
		// A VMM's command line names files inside the state folder
		// (flintlockd's own names only the folder).
		if pids := framework.VMMProcesses(d.StateDir + "/"); len(pids) > 0 {
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			t.Logf("host %s: killed %d VMM processes left behind (delete-all: %v)", name, len(pids), derr)
		}
		if t.Failed() {
			t.Logf("host %s: flintlockd log:\n%s", name, d.LogTail(40))
		}
	})
	return &host{name: name, Daemon: d}
}

// list returns the host's microVMs.
func (h *host) list(ctx context.Context) ([]*types.MicroVM, error) {
	resp, err := h.Client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetMicrovm(), nil
}

// get returns one microVM of the host by uid.
func (h *host) get(ctx context.Context, uid string) (*types.MicroVM, error) {
	resp, err := h.Client.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: uid})
	if err != nil {
		return nil, err
	}
	return resp.GetMicrovm(), nil
}

// console is the guest's serial console so far.
func (h *host) console(vm *types.MicroVM) string {
	b, _ := os.ReadFile(filepath.Join(h.VMDir(vm), "console.log"))
	return string(b)
}
