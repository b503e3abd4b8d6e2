package process

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The operator's copy of the command line is a shell command that gives
// back the same argument vector.
func TestFormatCmdlineRoundTrip(t *testing.T) {
	argv := []string{"/usr/bin/qemu", "-name", "guest=X", "-append", "console=ttyS0 it's -- x", "-S", "-m", "64", "-x", "a b$c"}
	text := FormatCmdline(argv, []string{"fd 3: socket"})
	if !strings.HasPrefix(text, "# fd 3: socket\n/usr/bin/qemu \\\n  -name guest=X \\\n") {
		t.Errorf("layout:\n%s", text)
	}
	script := filepath.Join(t.TempDir(), "cmd.sh")
	// Replace the program by printf to read the words back.
	body := "printf '%s\\n' " + strings.SplitN(text, "/usr/bin/qemu", 2)[1]
	if err := os.WriteFile(script, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sh", script).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n"); !slices.Equal(got, argv[1:]) {
		t.Errorf("shell read back %q, want %q", got, argv[1:])
	}
}

func TestExitReason(t *testing.T) {
	for _, tc := range []struct {
		name            string
		console, vmmLog []string
		status, want    string
	}{
		{name: "nothing", want: "vmm process exited"},
		{name: "status only", status: "signal: killed", want: "signal: killed"},
		{
			name: "panic",
			console: []string{
				"[    1.18] VFS: Cannot open root device",
				"[    1.19] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
				"[    1.20] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0) ]---",
			},
			status: "exit status 0",
			want:   "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0); exit status 0",
		},
		{
			name:    "power off and stop note",
			console: []string{"[    3.5] reboot: Power down"},
			vmmLog:  []string{"[flintlockd] stop: quit at T"},
			want:    "reboot: Power down; stop: quit at T",
		},
		{
			name:   "qemu error",
			vmmLog: []string{"qemu-system-x86_64: -drive id=disk0: Could not open 'x': No such file or directory"},
			status: "exit status 1",
			want:   "qemu-system-x86_64: -drive id=disk0: Could not open 'x': No such file or directory; exit status 1",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ExitReason(tc.console, tc.vmmLog, tc.status); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

// Only the lines of the latest run count.
func TestLastRunLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if got := LastRunLines(path); got != nil {
		t.Fatalf("missing file: %q", got)
	}
	if err := os.WriteFile(path, []byte("before\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := LastRunLines(path); !slices.Equal(got, []string{"before"}) {
		t.Fatalf("no note: %q", got)
	}
	for _, run := range []string{"run one\n", "run two\r\n  second line\n\n"} {
		if err := AppendNote(path, "starting vmm"); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(run); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if got := LastRunLines(path); !slices.Equal(got, []string{"run two", "second line"}) {
		t.Fatalf("got %q", got)
	}
}
