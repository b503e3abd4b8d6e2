package qemu

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/vmmtest"
)

// startBareQEMU runs a paused QEMU with its QMP monitor on a socket at
// sock, created by the test and inherited as fd 3.
func startBareQEMU(t *testing.T, sock string) *exec.Cmd {
	t.Helper()
	a := guest(t)
	l, err := process.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cmd := exec.Command("qemu-system-x86_64", "-M", "microvm,accel=tcg", "-m", "64",
		"-nodefaults", "-no-user-config", "-nographic", "-S", "-kernel", a.Vmlinuz,
		"-name", "guest=qmp-test",
		"-chardev", "socket,id=qmp,fd=3,server=on,wait=off", "-mon", "chardev=qmp,mode=control")
	cmd.ExtraFiles = []*os.File{l}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

func TestQMPClient(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := startBareQEMU(t, sock)
	ctx := vmmtest.Ctx(t, 30*time.Second)

	c, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	var st qmpStatus
	if err := c.execute(ctx, "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != "prelaunch" || st.Running {
		t.Fatalf("status of a -S VM = %+v, want prelaunch", st)
	}
	var name struct{ Name string }
	if err := c.execute(ctx, "query-name", nil, &name); err != nil || name.Name != "qmp-test" {
		t.Fatalf("query-name = %+v, %v", name, err)
	}
	// Arguments are sent; an error reply is a *qmpError.
	err = c.execute(ctx, "human-monitor-command", map[string]string{"command-line": "info name"}, &name)
	if err == nil {
		t.Fatal("decoding a string into a struct did not fail")
	}
	var out string
	if err := c.execute(ctx, "human-monitor-command", map[string]string{"command-line": "info name"}, &out); err != nil || !strings.Contains(out, "qmp-test") {
		t.Fatalf("hmp info name = %q, %v", out, err)
	}
	err = c.execute(ctx, "no-such-command", nil, nil)
	var qe *qmpError
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("unknown command: %v", err)
	}
	// cont and stop emit RESUME/STOP events, which are skipped.
	for _, step := range []struct {
		cmd     string
		running bool
	}{{"cont", true}, {"stop", false}, {"cont", true}} {
		if err := c.execute(ctx, step.cmd, nil, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.execute(ctx, "query-status", nil, &st); err != nil || st.Running != step.running {
			t.Fatalf("after %s: %+v, %v", step.cmd, st, err)
		}
	}
	c.Close()

	// One exchange per connection, as the provider does; quit ends QEMU.
	if err := qmpDo(ctx, sock, "quit", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("qemu after quit: %v", err)
	}
	if _, err := dialQMP(ctx, sock); err == nil {
		t.Fatal("dial succeeded after quit")
	}
}

// A server that accepts but never greets: ctx bounds the client.
func TestQMPContext(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "mute.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := dialQMP(ctx, sock); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial to a mute server: %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("deadline honoured after %v", d)
	}

	ctx2, cancel2 := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel2)
	if _, err := dialQMP(ctx2, sock); !errors.Is(err, context.Canceled) {
		t.Fatalf("dial cancelled: %v, want canceled", err)
	}

	// A server that is not QMP.
	sock2 := filepath.Join(t.TempDir(), "other.sock")
	l2, err := net.Listen("unix", sock2)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	go func() {
		c, err := l2.Accept()
		if err == nil {
			_, _ = c.Write([]byte("{\"hello\": 1}\n"))
			time.Sleep(100 * time.Millisecond)
			c.Close()
		}
	}()
	if _, err := dialQMP(vmmtest.Ctx(t, 5*time.Second), sock2); err == nil || !strings.Contains(err.Error(), "not a QMP server") {
		t.Fatalf("dial to a non-QMP server: %v", err)
	}
}
