package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Files a provider keeps in a VM's folder.
const (
	// PidFile holds the VMM's pid, written by the provider once it runs.
	PidFile = "vmm.pid"
	// CmdlineFile is the VMM's command line, for operators; its presence
	// also means a VMM was started in the folder.
	CmdlineFile = "vmm.cmdline"
	// ConsoleFile receives the guest's serial console (the VMM's stdout).
	ConsoleFile = "console.log"
	// LogFile receives the VMM's stderr and the provider's notes.
	LogFile = "vmm.log"
	// ConfigFile is the configuration sent to the VMM's API, for operators.
	ConfigFile = "vmm.config.json"
)

// notePrefix starts the lines the provider writes into console.log and
// vmm.log; StartNote marks where the output of one VMM run begins.
const (
	notePrefix = "[flintlockd] "
	// StartNote is the note written before each VMM start.
	StartNote = "starting vmm"
)

// AppendNote appends one provider line to a log file.
func AppendNote(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	_, werr := fmt.Fprintf(f, "\n%s%s at %s\n", notePrefix, text, time.Now().UTC().Format(time.RFC3339Nano))
	if err := f.Close(); werr == nil {
		werr = err
	}
	return werr
}

// OpenAppend opens a log file for appending, creating it.
func OpenAppend(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
}

// tailMax bounds how much of a log file is read for an exit reason.
const tailMax = 64 << 10

// LastRunLines returns the non-empty lines of path written since the latest
// start note (at most the last 64 KiB), without the note itself.
func LastRunLines(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil
	}
	off := max(st.Size()-tailMax, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return nil
	}
	if i := bytes.LastIndex(b, []byte(notePrefix+StartNote)); i >= 0 {
		b = b[i:]
		if j := bytes.IndexByte(b, '\n'); j >= 0 {
			b = b[j+1:]
		} else {
			b = nil
		}
	}
	var lines []string
	for l := range strings.SplitSeq(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

var printkTime = regexp.MustCompile(`^\[\s*\d+\.\d+\]\s*`)

// ExitReason explains a VMM exit from the last run's console and VMM log
// lines and, when known, the exit status: the guest's panic line (else its
// power-off or reboot line), the VMM's last message, the provider's last
// note and the status.
func ExitReason(console, vmmLog []string, status string) string {
	var parts []string
	var panicLine, reboot string
	for _, l := range console {
		l = printkTime.ReplaceAllString(l, "")
		switch {
		case panicLine == "" && strings.Contains(l, "Kernel panic"):
			panicLine = l
		case strings.HasPrefix(l, "reboot: "):
			reboot = l
		}
	}
	if panicLine != "" {
		parts = append(parts, panicLine)
	} else if reboot != "" {
		parts = append(parts, reboot)
	}
	var vmmLine, note string
	for _, l := range vmmLog {
		if strings.HasPrefix(l, notePrefix) {
			note = strings.TrimPrefix(l, notePrefix)
		} else {
			vmmLine = l
		}
	}
	for _, s := range []string{vmmLine, note, status} {
		if s != "" {
			parts = append(parts, s)
		}
	}
	if len(parts) == 0 {
		return "vmm process exited"
	}
	return strings.Join(parts, "; ")
}

// RemoveStale removes a file (a stale socket) if it exists.
func RemoveStale(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", filepath.Base(path), err)
	}
	return nil
}

// LockDir takes an exclusive flock on the VM folder, so that two Starts (or
// a Start and a Stop) of one VM never interleave, even across daemons.
func LockDir(ctx context.Context, dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("lock vm folder: %w", err)
	}
	wait := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = f.Close() }, nil // closing releases the lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock vm folder: %w", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("lock vm folder: %w", ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// IsELF reports whether the file at path starts with the ELF magic: an
// uncompressed vmlinux, as Firecracker and Cloud Hypervisor boot directly
// (a bzImage does not).
func IsELF(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return false, nil
		}
		return false, err
	}
	return string(magic) == "\x7fELF", nil
}

// FormatCmdline renders argv for operators as a shell command, one option
// per line, after comment lines.
func FormatCmdline(argv []string, comments []string) string {
	var b strings.Builder
	for _, c := range comments {
		b.WriteString("# " + c + "\n")
	}
	for i, a := range argv {
		q := a
		if !shellSafe.MatchString(a) {
			q = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		switch {
		case i == 0:
		case strings.HasPrefix(a, "-"):
			b.WriteString(" \\\n  ")
		default:
			b.WriteString(" ")
		}
		b.WriteString(q)
	}
	b.WriteString("\n")
	return b.String()
}

// shellSafe are arguments a shell reads back unchanged without quotes.
var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`)
