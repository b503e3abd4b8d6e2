package store

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// Environment of the writer child of TestCrashSafety.
const (
	crashEnvPath  = "STORE_CRASH_TEST_DB"
	crashEnvRound = "STORE_CRASH_TEST_ROUND"
)

// TestCrashSafety re-executes the test binary as a writer that creates,
// updates and deletes records from several goroutines and reports each
// acknowledged write on stdout; the parent kill -9s it at a random moment,
// reopens the file and checks that every record is whole, that the indexes
// agree with the records, and that every acknowledged write is there.
func TestCrashSafety(t *testing.T) {
	if path := os.Getenv(crashEnvPath); path != "" {
		crashWriter(path, os.Getenv(crashEnvRound))
		os.Exit(0)
	}

	dir := t.TempDir()
	path := dir + "/crash.db"
	ctx := context.Background()
	for round := range 4 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashSafety$")
		cmd.Env = append(os.Environ(), crashEnvPath+"="+path, crashEnvRound+"="+strconv.Itoa(round))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill() })

		var (
			created  = map[string]bool{} // acknowledged creates
			deleting = map[string]bool{} // deletes started (maybe not done)
			deleted  = map[string]bool{} // acknowledged deletes
			version  = map[string]int32{}
			lines    int
		)
		firstLine := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) < 2 {
					continue
				}
				lines++
				if lines == 1 {
					close(firstLine)
				}
				switch f[0] {
				case "C":
					created[f[1]] = true
				case "d":
					deleting[f[1]] = true
				case "D":
					deleted[f[1]] = true
				case "U":
					v, _ := strconv.Atoi(f[2])
					version[f[1]] = max(version[f[1]], int32(v))
				}
			}
		}()

		select {
		case <-firstLine:
		case <-time.After(30 * time.Second):
			t.Fatal("writer child wrote nothing")
		}
		time.Sleep(time.Duration(50+rand.IntN(400)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-done
		_ = cmd.Wait()

		s, err := Open(path)
		if err != nil {
			t.Fatalf("round %d: reopen after kill -9: %v", round, err)
		}
		n := checkConsistency(t, s)
		for uid := range created {
			vm, err := s.Get(ctx, uid)
			switch {
			case deleted[uid]:
				if !errdefs.IsNotFound(err) {
					t.Errorf("round %d: acknowledged delete of %s undone: %v", round, uid, err)
				}
			case deleting[uid]:
				// Interrupted delete: either outcome is fine.
			case err != nil:
				t.Errorf("round %d: acknowledged create of %s lost: %v", round, uid, err)
			case vm.Version < version[uid]:
				t.Errorf("round %d: %s has version %d, but version %d was acknowledged", round, uid, vm.Version, version[uid])
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: %d acknowledged writes before kill, %d records on reopen", round, lines, n)
		if len(created) == 0 {
			t.Errorf("round %d: no create was acknowledged", round)
		}
	}
}

// crashWriter is the child of TestCrashSafety: it writes until it is killed
// (or for at most a minute) and prints one line per acknowledged write.
func crashWriter(path, round string) {
	s, err := Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash writer:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		// One write per line: a line is either fully in the pipe or absent.
		_, _ = os.Stdout.WriteString(fmt.Sprintf(format, args...) + "\n")
	}
	deadline := time.Now().Add(time.Minute)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []string
			for i := 0; time.Now().Before(deadline); i++ {
				uid := fmt.Sprintf("R%s-W%d-%05d", round, w, i)
				vm := newVM(uid, "ns"+strconv.Itoa(i%3), uid)
				vm.Spec.Labels["pad"] = strings.Repeat("x", i%200) // vary record sizes
				if err := s.Create(ctx, vm); err != nil {
					fmt.Fprintln(os.Stderr, "create:", err)
					os.Exit(2)
				}
				say("C %s", uid)
				mine = append(mine, uid)
				if i%2 == 0 {
					vm, err := s.Update(ctx, uid, func(vm *types.MicroVM) error {
						vm.Status.State = types.MicroVMStatus_CREATED
						vm.Status.Retry++
						return nil
					})
					if err != nil {
						fmt.Fprintln(os.Stderr, "update:", err)
						os.Exit(2)
					}
					say("U %s %d", uid, vm.Version)
				}
				if i%3 == 2 {
					victim := mine[0]
					mine = mine[1:]
					say("d %s", victim)
					if err := s.Delete(ctx, victim); err != nil {
						fmt.Fprintln(os.Stderr, "delete:", err)
						os.Exit(2)
					}
					say("D %s", victim)
				}
			}
		}()
	}
	wg.Wait()
	_ = s.Close()
}
