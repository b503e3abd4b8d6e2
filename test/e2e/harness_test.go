// Package e2e runs flintlockd as operators do — a separate process talking
// to a real containerd, pulling from a real registry on loopback and booting
// real guests under QEMU — and drives it through its gRPC API, its HTTP
// gateway and the fl command line.
package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
	"github.com/liquidmetal-go/liquidmetal/internal/testimages"
)

// env is what TestMain set up for every test.
var env struct {
	dir        string // scratch folder
	flintlockd string // binary
	fl         string // binary
	containerd *testenv.Containerd
	registry   *testenv.Registry
	images     testimages.Images
}

const namespace = "flintlock"

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
	var err error
	// Unix socket paths are short: keep the scratch folder near /tmp.
	env.dir, err = os.MkdirTemp("", "lm-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(env.dir)
	fail := func(what string, err error) int {
		fmt.Fprintf(os.Stderr, "e2e set-up: %s: %v\n", what, err)
		return 1
	}
	bin := filepath.Join(env.dir, "bin")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+"/", "../../cmd/flintlockd", "../../cmd/fl")
	if out, err := build.CombinedOutput(); err != nil {
		return fail("building binaries", fmt.Errorf("%v\n%s", err, out))
	}
	env.flintlockd, env.fl = filepath.Join(bin, "flintlockd"), filepath.Join(bin, "fl")

	env.containerd, err = testenv.StartContainerd(ctx, filepath.Join(env.dir, "containerd"))
	if err != nil {
		return fail("containerd", err)
	}
	defer env.containerd.Stop()

	regBin, err := testenv.RegistryBinary(ctx)
	if err != nil {
		return fail("registry binary", err)
	}
	env.registry, err = testenv.StartRegistry(ctx, regBin, filepath.Join(env.dir, "registry"), "")
	if err != nil {
		return fail("registry", err)
	}
	defer env.registry.Stop()

	root, err := testenv.RepoRoot()
	if err != nil {
		return fail("repo root", err)
	}
	art, err := testimages.Build(ctx, filepath.Join(root, "bin", "cache", "guest"))
	if err != nil {
		return fail("guest artifacts", err)
	}
	env.images, err = testimages.Push(ctx, art, env.registry.Host)
	if err != nil {
		return fail("pushing test images", err)
	}
	return m.Run()
}

// daemon is one flintlockd process.
type daemon struct {
	t        *testing.T
	stateDir string
	grpcAddr string
	httpAddr string
	metrics  string
	args     []string
	cmd      *exec.Cmd
	logFile  string
	conn     *grpc.ClientConn
	client   v1alpha1.MicroVMClient
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startDaemon starts flintlockd with its own state folder; extra flags are
// appended. The daemon and everything it created are removed at the end.
func startDaemon(t *testing.T, extra ...string) *daemon {
	t.Helper()
	d := &daemon{
		t:        t,
		stateDir: t.TempDir(),
		grpcAddr: freeAddr(t),
		httpAddr: freeAddr(t),
		metrics:  freeAddr(t),
	}
	d.args = append([]string{"run",
		"--insecure",
		"--grpc-endpoint", d.grpcAddr,
		"--http-endpoint", d.httpAddr,
		"--metrics-endpoint", d.metrics,
		"--state-dir", d.stateDir,
		"--containerd-socket", env.containerd.Address,
		"--containerd-namespace", namespace,
		"--qemu-accel", "tcg",
		"--max-retries", "3",
		"--retry-base-delay", "200ms",
		"--log-level", "debug",
	}, extra...)
	d.logFile = filepath.Join(d.stateDir, "flintlockd.log")
	d.start()
	t.Cleanup(func() {
		d.deleteAll()
		d.stop()
		if t.Failed() {
			b, _ := os.ReadFile(d.logFile)
			t.Logf("flintlockd log:\n%s", tail(string(b), 60))
		}
	})
	return d
}

func (d *daemon) start() {
	d.t.Helper()
	lf, err := os.OpenFile(d.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	defer lf.Close()
	d.cmd = exec.Command(env.flintlockd, d.args...)
	d.cmd.Stdout, d.cmd.Stderr = lf, lf
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + d.metrics + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(d.logFile)
			d.t.Fatalf("flintlockd not ready after 30s:\n%s", tail(string(b), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.conn, err = grpc.NewClient(d.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		d.t.Fatal(err)
	}
	d.client = v1alpha1.NewMicroVMClient(d.conn)
}

// kill ends flintlockd with SIGKILL, as a crash would.
func (d *daemon) kill() {
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	if d.cmd != nil && d.cmd.Process != nil {
		_ = d.cmd.Process.Kill()
		_ = d.cmd.Wait()
	}
	d.cmd = nil
}

func (d *daemon) stop() {
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	if d.cmd != nil && d.cmd.Process != nil {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = d.cmd.Process.Kill()
			<-done
		}
	}
	d.cmd = nil
}

// deleteAll deletes every VM of the daemon and waits for them to go, so a
// failed test leaves no VMM behind.
func (d *daemon) deleteAll() {
	if d.client == nil || d.cmd == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := d.client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{})
	if err != nil {
		return
	}
	for _, vm := range resp.GetMicrovm() {
		_, _ = d.client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: vm.GetSpec().GetUid()})
	}
	for ctx.Err() == nil {
		resp, err := d.client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{})
		if err != nil || len(resp.GetMicrovm()) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// spec is a VM booting the test kernel, initrd and root image, whose
// user-data prints marker on the console.
func spec(name, marker string) *types.MicroVMSpec {
	ud := "#!/bin/sh\necho " + marker + "\n"
	root := env.images.Root
	return &types.MicroVMSpec{
		Id:         name,
		Namespace:  "e2e",
		Vcpu:       1,
		MemoryInMb: 256,
		Labels:     map[string]string{"suite": "e2e"},
		Kernel:     &types.Kernel{Image: env.images.Kernel},
		Initrd:     &types.Initrd{Image: env.images.Initrd},
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
	deadline := time.Now().Add(timeout)
	var last *types.MicroVM
	for time.Now().Before(deadline) {
		resp, err := d.client.GetMicroVM(context.Background(), &v1alpha1.GetMicroVMRequest{Uid: uid})
		if err == nil {
			last = resp.GetMicrovm()
			st := last.GetStatus().GetState()
			if st == want {
				return last
			}
			if st == types.MicroVMStatus_FAILED {
				d.t.Fatalf("vm %s FAILED (%s): %s", uid, last.GetStatus().GetFailureReason(), last.GetStatus().GetFailureMessage())
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.t.Fatalf("vm %s did not reach %s in %s; last: %v", uid, want, timeout, last.GetStatus())
	return nil
}

// waitGone polls Get until the VM is NotFound.
func (d *daemon) waitGone(uid string, timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		_, err := d.client.GetMicroVM(context.Background(), &v1alpha1.GetMicroVMRequest{Uid: uid})
		if err != nil && strings.Contains(err.Error(), "not found") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.t.Fatalf("vm %s still there after %s", uid, timeout)
}

func (d *daemon) vmDir(vm *types.MicroVM) string {
	return filepath.Join(d.stateDir, "vm", vm.GetSpec().GetNamespace(), vm.GetSpec().GetId(), vm.GetSpec().GetUid())
}

// waitConsole waits until the VM's console log holds text.
func (d *daemon) waitConsole(vm *types.MicroVM, text string, timeout time.Duration) {
	d.t.Helper()
	path := filepath.Join(d.vmDir(vm), "console.log")
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), text) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	b, _ := os.ReadFile(path)
	d.t.Fatalf("console of %s has no %q after %s:\n%s", vm.GetSpec().GetUid(), text, timeout, tail(string(b), 40))
}

// vmmProcesses lists the pids of processes whose command line names uid.
func vmmProcesses(uid string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), uid) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && strings.HasPrefix(string(stat[i+1:]), " Z") {
			continue // a zombie waiting for its reaper is not a running VMM
		}
		pids = append(pids, pid)
	}
	return pids
}

type snapshotInfo = snapshots.Info

// assertNothingLeft checks that the VM left no process, file, lease,
// snapshot or mount behind.
func (d *daemon) assertNothingLeft(vm *types.MicroVM) {
	d.t.Helper()
	uid := vm.GetSpec().GetUid()
	if pids := vmmProcesses(uid); len(pids) > 0 {
		d.t.Errorf("VMM processes of %s still running: %v", uid, pids)
	}
	if _, err := os.Stat(d.vmDir(vm)); !os.IsNotExist(err) {
		d.t.Errorf("VM folder %s still exists (%v)", d.vmDir(vm), err)
	}
	c, err := containerd.New(env.containerd.Address, containerd.WithDefaultNamespace(namespace))
	if err != nil {
		d.t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	ls, err := c.LeasesService().List(ctx)
	if err != nil {
		d.t.Fatal(err)
	}
	for _, l := range ls {
		if strings.Contains(l.ID, uid) {
			d.t.Errorf("containerd lease %s still exists", l.ID)
		}
	}
	for _, sn := range []string{"overlayfs", "native"} {
		_ = c.SnapshotService(sn).Walk(ctx, func(_ context.Context, info snapshotInfo) error {
			if strings.Contains(info.Name, uid) {
				d.t.Errorf("snapshot %s/%s still exists", sn, info.Name)
			}
			return nil
		})
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		d.t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), uid) || strings.Contains(sc.Text(), d.stateDir) {
			d.t.Errorf("mount left behind: %s", sc.Text())
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
