package process

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/oklog/ulid/v2"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

// supPrefix starts argv[0] of the test's stand-in VMMs; the VM uid follows.
const supPrefix = "lm-supervisor-test-"

func supUID(argv []string) string {
	uid, _ := strings.CutPrefix(argv[0], supPrefix)
	return uid
}

// launchSleep starts a stand-in VMM for uid in dir as a provider does:
// command line file, start notes, then Launch. ignoreTerm makes it ignore
// SIGTERM.
func launchSleep(t *testing.T, s *Supervisor, uid, dir string, ignoreTerm bool) *Child {
	t.Helper()
	script := `exec -a "$0" sleep 60`
	if ignoreTerm {
		script = `trap "" TERM; ` + script
	}
	cmd := exec.Command("bash", "-c", script, supPrefix+uid)
	if err := os.WriteFile(filepath.Join(dir, CmdlineFile), []byte(FormatCmdline(cmd.Args, nil)), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{ConsoleFile, LogFile} {
		if err := AppendNote(filepath.Join(dir, f), StartNote); err != nil {
			t.Fatal(err)
		}
	}
	c, err := s.Launch(uid, dir, cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Kill(c) })
	// Wait for the exec, after which /proc shows the marker.
	for deadline := time.Now().Add(5 * time.Second); ; {
		if argv, _ := Cmdline(c.Pid); len(argv) > 0 && supUID(argv) == uid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("stand-in VMM did not exec")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return c
}

func closedWithin(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	default:
	}
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// A VMM is found by the Supervisor that started it and by a new one (a
// restarted daemon) through the pid file or, without it, /proc; both see
// it exit; Stop escalates from SIGTERM to SIGKILL; the exit reason names
// the signal and the provider's note.
func TestSupervisor(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := NewSupervisor(SupervisorOptions{UIDOf: supUID})
	uid, dir := ulid.Make().String(), t.TempDir()

	if st := s.Exited(uid, dir); st.State != vmm.StateNotStarted {
		t.Fatalf("status before any start: %+v", st)
	}
	if pid, err := s.Find(uid, dir); err != nil || pid != 0 {
		t.Fatalf("Find before any start = %d, %v", pid, err)
	}
	c := launchSleep(t, s, uid, dir, false)
	if pid, err := ReadPidFile(filepath.Join(dir, PidFile)); err != nil || pid != c.Pid {
		t.Fatalf("pid file = %d, %v; want %d", pid, err, c.Pid)
	}
	if pid, err := s.Find(uid, dir); err != nil || pid != c.Pid {
		t.Fatalf("Find = %d, %v; want %d", pid, err, c.Pid)
	}

	// A restarted daemon: by the pid file, then by /proc alone.
	s2 := NewSupervisor(SupervisorOptions{UIDOf: supUID})
	if pid, err := s2.Find(uid, dir); err != nil || pid != c.Pid {
		t.Fatalf("new supervisor Find = %d, %v; want %d", pid, err, c.Pid)
	}
	if err := os.WriteFile(filepath.Join(dir, PidFile), []byte(strconv.Itoa(os.Getpid())), 0o640); err != nil {
		t.Fatal(err)
	}
	if pid, err := s2.Find(uid, dir); err != nil || pid != c.Pid {
		t.Fatalf("Find with a pid file naming another process = %d, %v; want %d", pid, err, c.Pid)
	}
	if s2.Ours(os.Getpid(), uid) {
		t.Fatal("Ours(the test process)")
	}
	w1, err := s.Wait(ctx, uid, dir)
	if err != nil {
		t.Fatal(err)
	}
	w2, err := s2.Wait(ctx, uid, dir)
	if err != nil {
		t.Fatal(err)
	}
	if closedWithin(w1, 0) || closedWithin(w2, 0) {
		t.Fatal("wait channel closed while the VMM runs")
	}

	// Stopped by the new supervisor: the default quit is SIGTERM.
	if err := s2.Stop(ctx, uid, dir, 0, StopSteps{}); err != nil {
		t.Fatal(err)
	}
	if !closedWithin(w1, 5*time.Second) || !closedWithin(w2, 5*time.Second) {
		t.Fatal("wait channels not closed after the stop")
	}
	for _, sv := range []*Supervisor{s, s2} {
		if pid, err := sv.Find(uid, dir); err != nil || pid != 0 {
			t.Fatalf("Find after the stop = %d, %v", pid, err)
		}
	}
	st := s.Exited(uid, dir)
	if st.State != vmm.StateExited || !strings.Contains(st.Reason, "stop: quit") || !strings.Contains(st.Reason, "signal: terminated") {
		t.Fatalf("exit status %+v; want the quit note and SIGTERM", st)
	}
	if w, err := s.Wait(ctx, uid, dir); err != nil || !closedWithin(w, 0) {
		t.Fatalf("Wait with no VMM running: %v", err)
	}

	// A VMM that ignores SIGTERM is killed after QuitWait; a graceful
	// step that fails is skipped.
	c = launchSleep(t, s, uid, dir, true)
	start := time.Now()
	graceful := 0
	err = s.Stop(ctx, uid, dir, time.Minute, StopSteps{Graceful: func(context.Context) error {
		graceful++
		return os.ErrClosed
	}})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < QuitWait || took > QuitWait+5*time.Second || graceful != 1 {
		t.Fatalf("stop took %v with %d graceful calls; want about %v and 1", took, graceful, QuitWait)
	}
	if !closedWithin(c.Done(), 0) {
		t.Fatal("Stop returned before the child was reaped")
	}
	if st := s.Exited(uid, dir); !strings.Contains(st.Reason, "stop: SIGKILL") || !strings.Contains(st.Reason, "signal: killed") {
		t.Fatalf("exit reason %q; want SIGKILL", st.Reason)
	}
}

// WaitReady reports a child that exits during start with its reason.
func TestWaitReadyChildExits(t *testing.T) {
	s := NewSupervisor(SupervisorOptions{UIDOf: supUID})
	uid, dir := ulid.Make().String(), t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, CmdlineFile), []byte("x\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "echo 'vmm: bad config' >&2; exit 3")
	logf, err := OpenAppend(filepath.Join(dir, LogFile))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stderr = logf
	c, err := s.Launch(uid, dir, cmd)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = s.WaitReady(ctx, uid, dir, c, func(context.Context) error { return os.ErrNotExist })
	if err == nil || !strings.Contains(err.Error(), "vmm: bad config") || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("WaitReady = %v; want the exit reason", err)
	}
}

// TestSupervisorStartHelpers: Claim serialises starts and finds the
// running VMM, Running refuses a VM without one, Status asks the provider
// only about a live VMM, Unanswered reports a VMM that ended meanwhile as
// exited, and LockStop accepts a VM folder that is gone.
func TestSupervisorStartHelpers(t *testing.T) {
	s := NewSupervisor(SupervisorOptions{UIDOf: supUID})
	uid, dir := ulid.Make().String(), t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	live := func(_ context.Context, _, _ string, pid int) (vmm.Status, error) {
		return vmm.Status{State: vmm.StatePaused, Pid: pid}, nil
	}

	unlock, pid, err := s.Claim(ctx, uid, dir)
	if err != nil || pid != 0 {
		t.Fatalf("Claim before a start: pid %d, %v", pid, err)
	}
	lctx, lcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	if _, _, err := s.Claim(lctx, uid, dir); err == nil {
		t.Fatal("a second Claim got the folder while the first holds it")
	}
	lcancel()
	if _, err := s.Running(uid, dir); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("Running without a VMM: %v", err)
	}
	if st, err := s.Status(ctx, uid, dir, live); err != nil || st.State != vmm.StateNotStarted {
		t.Fatalf("Status without a VMM: %+v, %v", st, err)
	}
	c := launchSleep(t, s, uid, dir, false)
	unlock()

	unlock, pid, err = s.Claim(ctx, uid, dir)
	if err != nil || pid != c.Pid {
		t.Fatalf("Claim with a VMM running: pid %d (want %d), %v", pid, c.Pid, err)
	}
	unlock()
	if pid, err := s.Running(uid, dir); err != nil || pid != c.Pid {
		t.Fatalf("Running: %d (want %d), %v", pid, c.Pid, err)
	}
	if st, err := s.Status(ctx, uid, dir, live); err != nil || st.State != vmm.StatePaused || st.Pid != c.Pid {
		t.Fatalf("Status of a running VMM: %+v, %v", st, err)
	}
	if st, err := s.Unanswered(ctx, uid, dir, c.Pid, "sleep", os.ErrDeadlineExceeded); err == nil || st.State != vmm.StateRunning {
		t.Fatalf("Unanswered while it runs: %+v, %v", st, err)
	}
	s.Kill(c)
	if st, err := s.Unanswered(ctx, uid, dir, c.Pid, "sleep", os.ErrDeadlineExceeded); err != nil || st.State != vmm.StateExited {
		t.Fatalf("Unanswered once it is gone: %+v, %v", st, err)
	}

	gone := filepath.Join(t.TempDir(), "gone")
	unlock, err = s.LockStop(ctx, uid, gone)
	if err != nil {
		t.Fatalf("LockStop of a missing folder: %v", err)
	}
	unlock()
	if _, err := s.LockStop(ctx, uid, filepath.Join(dir, CmdlineFile, "x")); err == nil {
		t.Fatal("LockStop under a file succeeded")
	}
}
