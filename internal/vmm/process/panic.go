package process

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
)

// Markers of a guest kernel panic on the serial console: the panic line
// itself ("Kernel panic - not syncing: <why>") and the closing line the
// kernel prints after the stack trace ("---[ end Kernel panic - not
// syncing: <why> ]---").
var panicMarkers = []string{"---[ end Kernel panic", "Kernel panic - not syncing"}

// PanicLine reports whether a console line announces a guest kernel
// panic and returns it without its printk timestamp.
func PanicLine(line string) (string, bool) {
	line = strings.TrimSpace(line)
	for _, m := range panicMarkers {
		if i := strings.Index(line, m); i >= 0 {
			// Console lines may carry a prefix (timestamp, log level):
			// quote from the marker on.
			return strings.TrimSpace(line[i:]), true
		}
	}
	return "", false
}

// FindPanic returns the first panic line among lines ("" when none).
func FindPanic(lines []string) string {
	for _, l := range lines {
		if p, ok := PanicLine(l); ok {
			return p
		}
	}
	return ""
}

// PowerOffLine reports whether lines (a run's console) show the guest
// powering itself off ("reboot: Power down", "reboot: System halted"): a
// clean end, unlike a crash, a kill or a reboot request.
func PowerOffLine(lines []string) bool {
	for _, l := range lines {
		l = printkTime.ReplaceAllString(strings.TrimSpace(l), "")
		if l == "reboot: Power down" || l == "reboot: System halted" {
			return true
		}
	}
	return false
}

// maxLine bounds an unterminated console line kept between two scans.
const maxLine = 4 << 10

// ConsoleScanner follows a VM's console log for a kernel panic. Each Scan
// reads only what was appended since the previous one (a stat, then a
// read from the last offset), so polling it is cheap. It starts at most
// 64 KiB before the end of the file, so a panic printed while nobody was
// watching (a restarted daemon) is still seen. A provider's start note
// (a new VMM run) forgets an earlier panic. A file that shrinks or is
// replaced (rotated) is read again from its start. Not safe for
// concurrent use.
type ConsoleScanner struct {
	path    string
	started bool
	off     int64
	ino     uint64
	partial []byte
	panic   string
}

// NewConsoleScanner returns a scanner of the console log at path (which
// need not exist yet).
func NewConsoleScanner(path string) *ConsoleScanner { return &ConsoleScanner{path: path} }

// Scan reads the lines appended since the last call and returns the panic
// line of the current VMM run, "" when the guest has not panicked.
func (s *ConsoleScanner) Scan() (string, error) {
	f, err := os.Open(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return s.panic, nil
	}
	if err != nil {
		return s.panic, fmt.Errorf("console log: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return s.panic, fmt.Errorf("console log: %w", err)
	}
	var ino uint64
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		ino = sys.Ino
	}
	switch {
	case !s.started:
		s.started, s.ino = true, ino
		s.off = max(st.Size()-tailMax, 0)
	case ino != s.ino || st.Size() < s.off: // rotated or truncated
		s.ino, s.off, s.partial = ino, 0, nil
	}
	if st.Size() == s.off {
		return s.panic, nil
	}
	b, err := io.ReadAll(io.NewSectionReader(f, s.off, st.Size()-s.off))
	if err != nil {
		return s.panic, fmt.Errorf("console log: %w", err)
	}
	s.off += int64(len(b))
	b = append(s.partial, b...)
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break
		}
		s.line(string(b[:i]))
		b = b[i+1:]
	}
	if len(b) > maxLine {
		b = b[len(b)-maxLine:]
	}
	s.partial = append([]byte(nil), b...)
	return s.panic, nil
}

func (s *ConsoleScanner) line(l string) {
	if strings.HasPrefix(strings.TrimSpace(l), notePrefix+StartNote) {
		s.panic = ""
		return
	}
	if s.panic != "" {
		return // the first line of a panic says why; keep it
	}
	if p, ok := PanicLine(l); ok {
		s.panic = p
	}
}
