package firecracker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// fakeBin is where TestMain builds the stand-ins for the firecracker and
// jailer binaries (testdata/fakefirecracker, testdata/fakejailer): the
// real ones cannot run on the test hosts.
var fakeBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lm-fake-firecracker-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fakeBin = dir
	code := func() int {
		defer os.RemoveAll(dir)
		for name, pkg := range map[string]string{"firecracker": "./testdata/fakefirecracker", "jailer": "./testdata/fakejailer"} {
			// Static: the jailed one runs in an empty chroot.
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// logBuf collects a provider's log and echoes it to the test log while the
// test runs.
type logBuf struct {
	mu   sync.Mutex
	b    bytes.Buffer
	t    testing.TB
	done bool
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Write(p)
	if !l.done {
		l.t.Logf("%s", bytes.TrimSpace(p))
	}
	return len(p), nil
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newProvider returns a provider running the fake firecracker.
func newProvider(t testing.TB, opts Options) *Provider {
	t.Helper()
	lb := &logBuf{t: t}
	t.Cleanup(func() { lb.mu.Lock(); lb.done = true; lb.mu.Unlock() })
	if opts.Binary == "" {
		opts.Binary = filepath.Join(fakeBin, "firecracker")
	}
	opts.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeELF writes a file that starts like an ELF vmlinux.
func fakeELF(t testing.TB, path string) {
	t.Helper()
	if err := os.WriteFile(path, append([]byte("\x7fELF\x02\x01\x01"), make([]byte, 4089)...), 0o644); err != nil {
		t.Fatal(err)
	}
}

func blankFile(t testing.TB, path string, size int64) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

// newVM describes a VM with a root volume and a cidata disk in a fresh
// folder. Its VMM is stopped (and checked gone) when the test ends.
func newVM(t testing.TB, p *Provider) vmm.VM {
	t.Helper()
	dir := t.TempDir()
	vm := vmm.VM{
		UID:        ulid.Make().String(),
		Namespace:  "test",
		Name:       strings.ReplaceAll(t.Name(), "/", "-"),
		Dir:        dir,
		VCPU:       2,
		MemoryMB:   256,
		KernelPath: filepath.Join(dir, "kernel"),
		Cmdline:    "console=ttyS0 panic=1 reboot=k root=/dev/vda rw",
		Disks: []vmm.Disk{
			{ID: "root", Path: filepath.Join(dir, "root.img"), Format: "raw"},
			{ID: "cidata", Path: filepath.Join(dir, "cidata.img"), ReadOnly: true, Format: "raw"},
		},
	}
	fakeELF(t, vm.KernelPath)
	blankFile(t, vm.Disks[0].Path, 8<<20)
	blankFile(t, vm.Disks[1].Path, 1<<20)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := p.Stop(ctx, vm.UID, vm.Dir, 0); err != nil {
			t.Errorf("cleanup stop: %v", err)
		}
		if n := vmmCount(t, p, vm.UID); n != 0 {
			t.Errorf("%d vmm processes left for %s", n, vm.UID)
		}
	})
	return vm
}

// vmmCount counts the live VMM processes of uid.
func vmmCount(t testing.TB, p *Provider, uid string) int {
	t.Helper()
	pids, err := process.Find(func(argv []string) bool { return p.argvUID(argv) == uid })
	if err != nil {
		t.Fatal(err)
	}
	return len(pids)
}

// eventually polls cond every 20ms until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fileContains(path, s string) bool {
	b, err := os.ReadFile(path)
	return err == nil && bytes.Contains(b, []byte(s))
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// call is one request the fake firecracker received.
type call struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body"`
}

// journal reads the requests the fake firecracker received, but GET /
// (readiness and status polls).
func journal(t testing.TB, path string) []call {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var calls []call
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var c call
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatalf("journal line %q: %v", sc.Text(), err)
		}
		if c.Method == "GET" && c.Path == "/" {
			continue
		}
		calls = append(calls, c)
	}
	return calls
}

// canonJSON re-encodes a JSON document with sorted keys, so that two
// documents compare equal when they hold the same fields and values.
func canonJSON(t testing.TB, b []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("not JSON: %s: %v", b, err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// wantCall is an expected request, its body written by hand from the API
// description.
type wantCall struct {
	Method, Path, Body string
}

func checkCalls(t testing.TB, got []call, want []wantCall) {
	t.Helper()
	n := max(len(got), len(want))
	for i := range n {
		switch {
		case i >= len(got):
			t.Errorf("request %d missing: want %s %s %s", i, want[i].Method, want[i].Path, want[i].Body)
		case i >= len(want):
			t.Errorf("request %d unexpected: %s %s %s", i, got[i].Method, got[i].Path, got[i].Body)
		default:
			g, w := got[i], want[i]
			if g.Method != w.Method || g.Path != w.Path {
				t.Errorf("request %d: %s %s, want %s %s", i, g.Method, g.Path, w.Method, w.Path)
				continue
			}
			if gb, wb := canonJSON(t, g.Body), canonJSON(t, []byte(w.Body)); gb != wb {
				t.Errorf("request %d %s %s body:\n got %s\nwant %s", i, g.Method, g.Path, gb, wb)
			}
		}
	}
}
