package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// marker makes a test's processes recognisable in /proc.
func marker(t *testing.T) string {
	return fmt.Sprintf("lm-process-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"))
}

// startSleep starts a detached `sleep` child whose argv carries mark.
func startSleep(t *testing.T, mark string) *exec.Cmd {
	t.Helper()
	// exec -a sets argv[0] so the marker shows in /proc/PID/cmdline.
	cmd := exec.Command("bash", "-c", `exec -a "$0" sleep 60`, mark)
	if err := StartDetached(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

func hasMark(mark string) func([]string) bool {
	return func(argv []string) bool { return argv[0] == mark }
}

func TestFindStateAndZombie(t *testing.T) {
	mark := marker(t)
	cmd := startSleep(t, mark)
	pid := cmd.Process.Pid

	// Find sees it once exec has happened.
	deadline := time.Now().Add(5 * time.Second)
	var pids []int
	for time.Now().Before(deadline) {
		var err error
		if pids, err = Find(hasMark(mark)); err != nil {
			t.Fatal(err)
		}
		if len(pids) > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !slices.Equal(pids, []int{pid}) {
		t.Fatalf("Find = %v, want [%d]", pids, pid)
	}
	if !Running(pid) {
		t.Fatal("Running = false for a live process")
	}
	argv, err := Cmdline(pid)
	if err != nil || !slices.Equal(argv, []string{mark, "60"}) {
		t.Fatalf("Cmdline = %q, %v", argv, err)
	}
	// Setsid: the child leads a session of its own.
	if sid, err := unix.Getsid(pid); err != nil || sid != pid {
		t.Fatalf("session of child = %d, %v; want %d", sid, err, pid)
	}

	// Killed but not reaped: a zombie, which counts as exited.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h, err := Open(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := State(pid)
	if err != nil || s != 'Z' {
		t.Fatalf("State = %q, %v; want Z", s, err)
	}
	if Running(pid) {
		t.Fatal("Running = true for a zombie")
	}
	if pids, _ := Find(hasMark(mark)); len(pids) != 0 {
		t.Fatalf("Find returned zombie %v", pids)
	}
	_ = cmd.Wait()
	if _, err := Open(pid); !errdefs.IsNotFound(err) {
		t.Fatalf("Open of a reaped process: %v, want not found", err)
	}
	if _, err := State(pid); !errdefs.IsNotFound(err) {
		t.Fatalf("State of a reaped process: %v, want not found", err)
	}
}

// A process that is not our child (an orphaned grandchild) is waited on and
// signalled through its pidfd.
func TestHandleNonChild(t *testing.T) {
	mark := marker(t)
	out, err := exec.Command("bash", "-c", `(exec -a "$0" sleep 60) >/dev/null 2>&1 & echo $!`, mark).Output()
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	h, err := Open(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	t.Cleanup(func() { _ = h.Signal(syscall.SIGKILL) })
	if h.Pid() != pid || h.Exited() {
		t.Fatalf("handle pid %d exited %v", h.Pid(), h.Exited())
	}

	// Wait honours ctx.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := h.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait on a live process = %v, want deadline exceeded", err)
	}

	start := time.Now()
	if err := h.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if err := h.Wait(ctx2); err != nil {
		t.Fatalf("Wait after SIGTERM: %v", err)
	}
	if !h.Exited() || Running(pid) {
		t.Fatal("process still reported running")
	}
	t.Logf("exit noticed %v after the signal", time.Since(start))
	// Signalling an exited process is not an error.
	if err := h.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

func TestReadPidFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content string
		want          int
		notFound      bool
		bad           bool
	}{
		{name: "ok", content: "1234\n", want: 1234},
		{name: "spaces", content: "  42 ", want: 42},
		{name: "missing", notFound: true},
		{name: "garbage", content: "x1", bad: true},
		{name: "zero", content: "0", bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name)
			if tc.content != "" {
				if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			pid, err := ReadPidFile(path)
			switch {
			case tc.notFound:
				if !errdefs.IsNotFound(err) {
					t.Fatalf("err = %v, want not found", err)
				}
			case tc.bad:
				if err == nil || errdefs.IsNotFound(err) {
					t.Fatalf("err = %v, want a parse error", err)
				}
			case err != nil || pid != tc.want:
				t.Fatalf("= %d, %v; want %d", pid, err, tc.want)
			}
		})
	}
}

func TestSplitCmdline(t *testing.T) {
	for in, want := range map[string][]string{
		"":                 nil,
		"a\x00":            {"a"},
		"a\x00b c\x00\x00": {"a", "b c"},
	} {
		if got := splitCmdline([]byte(in)); !slices.Equal(got, want) {
			t.Errorf("splitCmdline(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestLookPath: a program named relative to the working folder comes back
// absolute, so it still starts from a VM folder; a missing one fails.
func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "prog"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	p, err := LookPath("./prog")
	if err != nil || p != filepath.Join(dir, "prog") {
		t.Fatalf("LookPath(./prog) = %q, %v", p, err)
	}
	if p, err := LookPath("./missing"); err == nil {
		t.Fatalf("LookPath(./missing) = %q", p)
	}
}
