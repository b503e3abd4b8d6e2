package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Files the provider keeps in a VM's folder.
const (
	pidFile     = "vmm.pid"
	cmdlineFile = "vmm.cmdline"
	consoleFile = "console.log"
	qmpSocket   = "qmp.sock"
	// logFile receives QEMU's own stdout and stderr (startup errors,
	// "terminating on signal") and the provider's notes.
	logFile = "vmm.log"
)

// notePrefix starts the lines the provider writes into console.log and
// vmm.log; startNote marks where the output of one VMM run begins.
const (
	notePrefix = "[flintlockd] "
	startNote  = notePrefix + "starting vmm"
)

// appendNote appends one provider line to a log file.
func appendNote(path, text string) error {
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

// tailMax bounds how much of a log file is read for an exit reason.
const tailMax = 64 << 10

// lastRunLines returns the lines of path written since the latest start
// note (at most the last tailMax bytes), without the note itself.
func lastRunLines(path string) []string {
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
	if i := bytes.LastIndex(b, []byte(startNote)); i >= 0 {
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

// exitReason explains a VMM exit from the last run's console and QEMU log
// lines and, when known, the exit status.
func exitReason(console, vmmLog []string, status string) string {
	var parts []string
	// The guest's own last word: a panic, else a power-off or reboot.
	// The first panic line is the cause ("---[ end Kernel panic ..." echoes
	// it).
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
	// QEMU's last message and the provider's last note (e.g. a stop).
	var qemuLine, note string
	for _, l := range vmmLog {
		if strings.HasPrefix(l, notePrefix) {
			note = strings.TrimPrefix(l, notePrefix)
		} else {
			qemuLine = l
		}
	}
	for _, s := range []string{qemuLine, note, status} {
		if s != "" {
			parts = append(parts, s)
		}
	}
	if len(parts) == 0 {
		return "vmm process exited"
	}
	return strings.Join(parts, "; ")
}

// sunPathMax is the longest path a unix socket address holds.
const sunPathMax = len(unix.RawSockaddrUnix{}.Path) - 1

// shortSocketPath returns a name for the socket at path that fits in a
// socket address: path itself, or /proc/self/fd/N/<base> through an O_PATH
// descriptor of its folder, valid until done is called.
func shortSocketPath(path string) (name string, done func(), err error) {
	if len(path) <= sunPathMax {
		return path, func() {}, nil
	}
	fd, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open socket folder: %w", err)
	}
	return fmt.Sprintf("/proc/self/fd/%d/%s", fd, filepath.Base(path)), func() { _ = unix.Close(fd) }, nil
}

// dialUnix connects to the unix socket at path, however long.
func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	name, done, err := shortSocketPath(path)
	if err != nil {
		return nil, err
	}
	defer done()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", name)
	if err != nil {
		return nil, fmt.Errorf("connect %q: %w", path, err)
	}
	return conn, nil
}

// listenUnix creates a listening unix socket at path (replacing a stale
// one) and returns it as a file to hand to a child process.
func listenUnix(path string) (_ *os.File, err error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	name, done, err := shortSocketPath(path)
	if err != nil {
		return nil, err
	}
	defer done()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	defer func() {
		if err != nil {
			_ = unix.Close(fd)
		}
	}()
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: name}); err != nil {
		return nil, fmt.Errorf("bind %q: %w", path, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		return nil, fmt.Errorf("listen %q: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// lockDir takes an exclusive flock on the VM folder, so that two Starts (or
// a Start and a Stop) of one VM never interleave, even across daemons.
func lockDir(ctx context.Context, dir string) (unlock func(), err error) {
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
