package framework

import (
	"context"
	"errors"
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

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// Daemon is one flintlockd process with its own state folder and loopback
// endpoints. Its exported fields are set by NewDaemon; Conn and Client are
// replaced on every Start.
type Daemon struct {
	Env         *Env
	StateDir    string
	GRPCAddr    string
	HTTPAddr    string
	MetricsAddr string
	// Args are flintlockd's arguments; Start uses them as they are then.
	Args []string
	// LogFile collects the daemon's stdout and stderr over every Start.
	LogFile string
	// PollInterval is the Get period of the Wait helpers (default 50 ms).
	PollInterval time.Duration

	Conn   *grpc.ClientConn
	Client v1alpha1.MicroVMClient

	cmd *exec.Cmd
}

// DefaultArgs are the flags every daemon gets after its endpoints, state
// folder and containerd: TCG (hardware acceleration may not boot the test
// kernel on every host), quick retries and debug logs. Flags given to
// NewDaemon come after them and override them.
var DefaultArgs = []string{
	"--qemu-accel", "tcg",
	"--max-retries", "3",
	"--retry-base-delay", "200ms",
	"--log-level", "debug",
}

// NewDaemon prepares (does not start) a flintlockd using stateDir, with
// extra flags appended to its arguments.
func NewDaemon(env *Env, stateDir string, extra ...string) (*Daemon, error) {
	d := &Daemon{Env: env, StateDir: stateDir, LogFile: filepath.Join(stateDir, "flintlockd.log")}
	addrs, err := FreeAddrs(3)
	if err != nil {
		return nil, err
	}
	d.GRPCAddr, d.HTTPAddr, d.MetricsAddr = addrs[0], addrs[1], addrs[2]
	d.Args = append([]string{"run",
		"--insecure",
		"--grpc-endpoint", d.GRPCAddr,
		"--http-endpoint", d.HTTPAddr,
		"--metrics-endpoint", d.MetricsAddr,
		"--state-dir", d.StateDir,
		"--containerd-socket", env.Containerd.Address,
		"--containerd-namespace", ContainerdNamespace,
	}, DefaultArgs...)
	d.Args = append(d.Args, extra...)
	return d, nil
}

// FreeAddr returns a loopback TCP address free at the time of the call.
func FreeAddr() (string, error) {
	addrs, err := FreeAddrs(1)
	if err != nil {
		return "", err
	}
	return addrs[0], nil
}

// FreeAddrs returns n distinct loopback TCP addresses free at the time of
// the call: all are held open until every one is chosen, as a port closed
// is the kernel's next pick.
func FreeAddrs(n int) ([]string, error) {
	addrs := make([]string, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

// StartDaemon starts flintlockd with its own state folder; extra flags are
// appended. The daemon and everything it created are removed at the end of
// the test, and its log is shown when the test failed.
func StartDaemon(t testing.TB, env *Env, extra ...string) *Daemon {
	t.Helper()
	d, err := NewDaemon(env, t.TempDir(), extra...)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		derr := d.DeleteAll(ctx)
		d.Stop()
		// A daemon the test left unreachable (credentials, a kill) must
		// not leave its guests running behind the test.
		if pids := VMMProcesses(d.StateDir + "/"); len(pids) > 0 {
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			t.Logf("killed %d VMM processes left by the daemon (delete-all: %v)", len(pids), derr)
		}
		if t.Failed() {
			t.Logf("flintlockd log:\n%s", d.LogTail(60))
		}
	})
	return d
}

// Start starts the daemon and connects a client once it reports ready
// (waiting up to 30 s). The daemon runs in a process group of its own, so
// a terminal's Ctrl-C reaches the caller, which decides how to end it, and
// it is killed if the caller dies.
func (d *Daemon) Start(ctx context.Context) error {
	if d.cmd != nil {
		return errors.New("flintlockd already started")
	}
	lf, err := os.OpenFile(d.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer lf.Close()
	cmd := exec.Command(d.Env.Flintlockd, d.Args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	d.cmd = cmd
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + d.MetricsAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if ctx.Err() != nil {
			d.Kill()
			return fmt.Errorf("waiting for flintlockd to be ready: %w", ctx.Err())
		}
		if time.Now().After(deadline) {
			d.Kill()
			return fmt.Errorf("flintlockd not ready after 30s:\n%s", d.LogTail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.Conn, err = grpc.NewClient(d.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		d.Kill()
		return err
	}
	d.Client = v1alpha1.NewMicroVMClient(d.Conn)
	return nil
}

// Pid is the daemon's process id, 0 when it is not running.
func (d *Daemon) Pid() int {
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// Kill ends flintlockd with SIGKILL, as a crash would.
func (d *Daemon) Kill() {
	d.closeConn()
	if d.cmd != nil && d.cmd.Process != nil {
		_ = d.cmd.Process.Kill()
		_ = d.cmd.Wait()
	}
	d.cmd = nil
}

// Stop ends flintlockd with SIGTERM (its VMs keep running), killing it
// after 15 s.
func (d *Daemon) Stop() {
	d.closeConn()
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

func (d *Daemon) closeConn() {
	if d.Conn != nil {
		d.Conn.Close()
		d.Conn = nil
	}
}

// DeleteAll deletes every VM of the daemon and waits until none is listed
// or ctx ends. It does nothing when the daemon is not running.
func (d *Daemon) DeleteAll(ctx context.Context) error {
	if d.Client == nil || d.cmd == nil {
		return nil
	}
	resp, err := d.Client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{})
	if err != nil {
		return err
	}
	for _, vm := range resp.GetMicrovm() {
		_, _ = d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: vm.GetSpec().GetUid()})
	}
	for {
		resp, err := d.Client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{})
		if err != nil {
			return err
		}
		if len(resp.GetMicrovm()) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d VMs still listed: %w", len(resp.GetMicrovm()), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *Daemon) pollInterval() time.Duration {
	if d.PollInterval > 0 {
		return d.PollInterval
	}
	return 50 * time.Millisecond
}

// WaitState polls Get until the VM reaches want; FAILED ends the wait
// early with an error unless wanted.
func (d *Daemon) WaitState(uid string, want types.MicroVMStatus_MicroVMState, timeout time.Duration) (*types.MicroVM, error) {
	deadline := time.Now().Add(timeout)
	var last *types.MicroVM
	for time.Now().Before(deadline) {
		resp, err := d.Client.GetMicroVM(context.Background(), &v1alpha1.GetMicroVMRequest{Uid: uid})
		if err == nil {
			last = resp.GetMicrovm()
			st := last.GetStatus().GetState()
			if st == want {
				return last, nil
			}
			if st == types.MicroVMStatus_FAILED {
				return nil, fmt.Errorf("vm %s FAILED (%s): %s", uid, last.GetStatus().GetFailureReason(), last.GetStatus().GetFailureMessage())
			}
		}
		time.Sleep(d.pollInterval())
	}
	return nil, fmt.Errorf("vm %s did not reach %s in %s; last: %v", uid, want, timeout, last.GetStatus())
}

// WaitGone polls Get until the VM is NotFound.
func (d *Daemon) WaitGone(uid string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		_, err := d.Client.GetMicroVM(context.Background(), &v1alpha1.GetMicroVMRequest{Uid: uid})
		if err != nil && strings.Contains(err.Error(), "not found") {
			return nil
		}
		time.Sleep(d.pollInterval())
	}
	return fmt.Errorf("vm %s still there after %s", uid, timeout)
}

// VMDir is the VM's folder on the host.
func (d *Daemon) VMDir(vm *types.MicroVM) string {
	return filepath.Join(d.StateDir, "vm", vm.GetSpec().GetNamespace(), vm.GetSpec().GetId(), vm.GetSpec().GetUid())
}

// WaitConsole waits until the VM's console log holds text.
func (d *Daemon) WaitConsole(vm *types.MicroVM, text string, timeout time.Duration) error {
	path := filepath.Join(d.VMDir(vm), "console.log")
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), text) {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	b, _ := os.ReadFile(path)
	return fmt.Errorf("console of %s has no %q after %s:\n%s", vm.GetSpec().GetUid(), text, timeout, Tail(string(b), 40))
}

// LogTail returns the last n lines of the daemon's log.
func (d *Daemon) LogTail(n int) string {
	b, _ := os.ReadFile(d.LogFile)
	return Tail(string(b), n)
}

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
