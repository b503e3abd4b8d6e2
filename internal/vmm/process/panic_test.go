package process

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPanicLine(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"[    2.345678] Kernel panic - not syncing: sysrq triggered crash", "Kernel panic - not syncing: sysrq triggered crash", true},
		{"Kernel panic - not syncing: VFS: Unable to mount root fs", "Kernel panic - not syncing: VFS: Unable to mount root fs", true},
		{"[    2.4] ---[ end Kernel panic - not syncing: Attempted to kill init! ]---", "---[ end Kernel panic - not syncing: Attempted to kill init! ]---", true},
		{"[    1.0] sysrq: Trigger a crash", "", false},
		{"echo Kernel panic", "", false},
	} {
		got, ok := PanicLine(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("PanicLine(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	if !PowerOffLine([]string{"[ 3.1] reboot: Power down"}) || PowerOffLine([]string{"[ 3.1] reboot: Restarting system"}) {
		t.Error("PowerOffLine does not tell a power-off from a reboot")
	}
}

func appendTo(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func scan(t *testing.T, s *ConsoleScanner) string {
	t.Helper()
	p, err := s.Scan()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConsoleScanner follows a console written in pieces: half lines,
// a panic, a new run, a rotation.
func TestConsoleScanner(t *testing.T) {
	path := filepath.Join(t.TempDir(), ConsoleFile)
	s := NewConsoleScanner(path)
	if p := scan(t, s); p != "" {
		t.Fatalf("missing file: panic %q", p)
	}
	appendTo(t, path, "[    0.0] Linux version 6.1\n[    1.2] Kernel pan")
	if p := scan(t, s); p != "" {
		t.Fatalf("before the panic: %q", p)
	}
	appendTo(t, path, "ic - not syncing: sysrq triggered crash\n[ 1.3] CPU: 0 PID: 1\n")
	const want = "Kernel panic - not syncing: sysrq triggered crash"
	if p := scan(t, s); p != want {
		t.Fatalf("got %q, want %q", p, want)
	}
	appendTo(t, path, "[ 1.4] ---[ end Kernel panic - not syncing: other ]---\n")
	if p := scan(t, s); p != want {
		t.Fatalf("the first panic line is kept: got %q", p)
	}
	// A new VMM run forgets the panic.
	if err := AppendNote(path, StartNote); err != nil {
		t.Fatal(err)
	}
	appendTo(t, path, "[ 0.1] Linux version 6.1\n")
	if p := scan(t, s); p != "" {
		t.Fatalf("after a restart: %q", p)
	}
	// Rotation: the file is replaced by a shorter one.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	appendTo(t, path, "[ 9.0] Kernel panic - not syncing: Attempted to kill init!\n")
	if p := scan(t, s); !strings.Contains(p, "Attempted to kill init") {
		t.Fatalf("after rotation: %q", p)
	}
}

// TestConsoleScannerStartsAtTail: a new scanner (a restarted daemon) sees
// a panic already written, but reads at most the tail of a long log.
func TestConsoleScannerStartsAtTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), ConsoleFile)
	appendTo(t, path, "Kernel panic - not syncing: too old\n"+strings.Repeat("x\n", tailMax))
	if p := scan(t, NewConsoleScanner(path)); p != "" {
		t.Fatalf("a panic before the tail was read: %q", p)
	}
	appendTo(t, path, "Kernel panic - not syncing: recent\n")
	if p := scan(t, NewConsoleScanner(path)); p != "Kernel panic - not syncing: recent" {
		t.Fatalf("got %q", p)
	}
}
