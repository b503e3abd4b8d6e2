package netenv

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
)

// Flintlockd is a flintlockd process running inside a host's namespace,
// as on a real host: its TAPs join the host's bridge and its VMMs run in
// the namespace. Its API is reached from inside the namespace.
type Flintlockd struct {
	Host     *Host
	StateDir string
	// GRPCAddr and MetricsAddr are addresses inside the namespace.
	GRPCAddr, MetricsAddr string
	LogFile               string
	Conn                  *grpc.ClientConn
	Client                v1alpha1.MicroVMClient

	bin  string
	args []string // without the extra flags of one start
	done chan struct{}
	proc *os.Process
}

// StartFlintlockd starts "bin run" in the host's namespace with its own
// state folder, listening on grpcAddr and metricsAddr (addresses of the
// namespace) and attaching TAPs to the host's bridge; extra flags follow
// (the containerd socket, by path, is reachable from any namespace). It
// returns once /readyz answers. At the end of the test its VMs are deleted
// and it is stopped.
func (h *Host) StartFlintlockd(t *testing.T, bin, grpcAddr, metricsAddr string, extra ...string) *Flintlockd {
	t.Helper()
	d := &Flintlockd{Host: h, StateDir: t.TempDir(), GRPCAddr: grpcAddr, MetricsAddr: metricsAddr, bin: bin}
	d.LogFile = filepath.Join(d.StateDir, "flintlockd.log")
	d.args = append([]string{"run", "--insecure",
		"--grpc-endpoint", grpcAddr, "--metrics-endpoint", metricsAddr,
		"--state-dir", d.StateDir, "--bridge-name", h.Config.Bridge,
	}, extra...)
	t.Cleanup(func() {
		if d.proc == nil || d.Exited() {
			// Not started, or crashed and not restarted: its VMMs are
			// killed with the namespace.
			return
		}
		d.deleteAll()
		_ = d.proc.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(15 * time.Second):
			_ = d.proc.Kill()
			<-d.done
		}
		if d.Conn != nil {
			d.Conn.Close()
		}
		if t.Failed() {
			b, _ := os.ReadFile(d.LogFile)
			t.Logf("flintlockd log (%s):\n%s", h.Name, tail(string(b), 60))
		}
	})
	d.start(t, nil, true)
	return d
}

// Restart starts the daemon again on the same state folder after it
// exited (a crash, or Kill), with more flags for this start only, and
// waits for it to be ready.
func (d *Flintlockd) Restart(t *testing.T, extra ...string) {
	t.Helper()
	if !d.Exited() {
		t.Fatalf("%s: restart while it runs", d)
	}
	d.start(t, extra, true)
}

// StartNoWait starts the daemon again like Restart, without waiting for it
// to be ready (it may be meant to crash).
func (d *Flintlockd) StartNoWait(t *testing.T, extra ...string) {
	t.Helper()
	if !d.Exited() {
		t.Fatalf("%s: start while it runs", d)
	}
	d.start(t, extra, false)
}

// Kill ends the daemon with SIGKILL, as a crash would, and waits for it.
func (d *Flintlockd) Kill() {
	_ = d.proc.Kill()
	<-d.done
}

// Exited reports whether the daemon process has ended.
func (d *Flintlockd) Exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// WaitExit waits up to timeout for the daemon to end by itself.
func (d *Flintlockd) WaitExit(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(timeout):
		b, _ := os.ReadFile(d.LogFile)
		t.Fatalf("%s did not exit within %s:\n%s", d, timeout, tail(string(b), 40))
	}
}

func (d *Flintlockd) start(t *testing.T, extra []string, wait bool) {
	t.Helper()
	cmd := d.Host.Command(d.bin, append(slices.Clone(d.args), extra...)...)
	log, err := os.OpenFile(d.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	// No Pdeathsig: it fires when the forking thread ends, and the threads
	// that enter namespaces (Do, DialContext) are ended on purpose. The
	// namespace's clean-up kills what is left in it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting flintlockd: %v", err)
	}
	done := make(chan struct{})
	d.proc, d.done = cmd.Process, done
	go func() { _ = cmd.Wait(); close(done) }()
	if d.Conn == nil {
		d.Conn, err = grpc.NewClient("passthrough:///"+d.GRPCAddr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return d.Host.DialContext(ctx, "tcp", addr)
			}))
		if err != nil {
			t.Fatal(err)
		}
		d.Client = v1alpha1.NewMicroVMClient(d.Conn)
	}
	if !wait {
		return
	}
	hc := d.Host.HTTPClient()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := hc.Get("http://" + d.MetricsAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-done:
			b, _ := os.ReadFile(d.LogFile)
			t.Fatalf("flintlockd exited:\n%s", tail(string(b), 40))
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(d.LogFile)
			t.Fatalf("flintlockd not ready after 30s: %v\n%s", err, tail(string(b), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// VMDir is the folder of a VM (console.log is there).
func (d *Flintlockd) VMDir(namespace, name, uid string) string {
	return filepath.Join(d.StateDir, "vm", namespace, name, uid)
}

// deleteAll deletes every VM and waits (up to a minute) until none is left.
func (d *Flintlockd) deleteAll() {
	if d.Client == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	list, err := d.Client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{})
	if err != nil {
		return
	}
	for _, vm := range list.GetMicrovm() {
		_, _ = d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: vm.GetSpec().GetUid()})
	}
	for ctx.Err() == nil {
		list, err := d.Client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{})
		if err != nil || len(list.GetMicrovm()) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitConsole waits until the VM's console holds text and returns it.
func (d *Flintlockd) WaitConsole(t *testing.T, dir, text string, timeout time.Duration) string {
	t.Helper()
	path := filepath.Join(dir, "console.log")
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		log := strings.ReplaceAll(string(b), "\r", "")
		if strings.Contains(log, text) {
			return log
		}
		if time.Now().After(deadline) {
			t.Fatalf("console %s has no %q after %s:\n%s", path, text, timeout, tail(log, 60))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// String names the daemon for messages.
func (d *Flintlockd) String() string { return fmt.Sprintf("flintlockd in %s", d.Host.Name) }
