// Package console owns the microVMs' serial console logs on the host: their
// rotation under a size cap, and reading them by offset across rotations.
//
// A VM's console is console.log in its folder, which the VMM appends to
// (QEMU's file chardev with append=on; the other providers hand the VMM an
// O_APPEND descriptor). VMMs outlive flintlockd, so the daemon cannot own
// the console through a pipe: a daemon restart would leave the VMM writing
// into a pipe nobody reads (its guest stalls once the pipe fills). Rotation
// therefore works on the file under the writer:
//
//   - The first K bytes (K a multiple of the file system block, the rest
//     kept) are copied to console.log.1, then cut from the start of
//     console.log with fallocate(FALLOC_FL_COLLAPSE_RANGE). The cut is
//     atomic against the VMM's O_APPEND writes, so nothing is lost; ext4
//     and xfs support it.
//   - Where the file system does not (tmpfs, overlayfs...), copy-truncate:
//     copy to EOF, truncate to zero. Output written between the last copy
//     and the truncate (microseconds) is lost.
//
// Offsets are positions in all the output since the VM was created: the
// file console.log.offset holds the offset of console.log's first byte, and
// console.log.1 holds the bytes just before it. Rotation and reads within
// flintlockd are serialised per folder, so readers never see a half-done
// rotation.
package console

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Files of a VM folder.
const (
	// File is the console log the VMM appends to.
	File = "console.log"
	// RotatedFile holds the output rotated out of File, up to its start.
	RotatedFile = "console.log.1"
	// OffsetFile holds the offset of File's first byte (decimal); absent
	// means 0.
	OffsetFile = "console.log.offset"
)

// DefaultMaxBytes is the default size cap of console.log.
const DefaultMaxBytes = 1 << 20

// locks serialise rotation and reads per folder (striped: no growth).
var locks [64]sync.RWMutex

func lockOf(dir string) *sync.RWMutex {
	h := fnv.New32a()
	_, _ = h.Write([]byte(filepath.Clean(dir)))
	return &locks[h.Sum32()%uint32(len(locks))]
}

// layout is where the output is at one instant: [start, base) in
// RotatedFile, [base, end) in File.
type layout struct {
	start, base, end int64
}

func readLayout(dir string) (layout, error) {
	base, err := readBase(dir)
	if err != nil {
		return layout{}, err
	}
	l := layout{start: base, base: base, end: base}
	if fi, err := os.Stat(filepath.Join(dir, RotatedFile)); err == nil {
		l.start = max(base-fi.Size(), 0)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return layout{}, err
	}
	if fi, err := os.Stat(filepath.Join(dir, File)); err == nil {
		l.end = base + fi.Size()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return layout{}, err
	}
	return l, nil
}

func readBase(dir string) (int64, error) {
	b, err := os.ReadFile(filepath.Join(dir, OffsetFile))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("console offset file %q is corrupt", b)
	}
	return n, nil
}

// Chunk is a piece of console output.
type Chunk struct {
	// Offset is where Data starts in the output; it is after the offset
	// asked for when the output there was rotated away.
	Offset int64
	Data   []byte
	// End is the end of the output when the chunk was read.
	End int64
}

// Read returns up to maxBytes of the console in dir from offset; a
// negative offset counts back from the end. A folder without a console
// reads as empty.
func Read(dir string, offset int64, maxBytes int) (Chunk, error) {
	mu := lockOf(dir)
	mu.RLock()
	defer mu.RUnlock()
	l, err := readLayout(dir)
	if err != nil {
		return Chunk{}, fmt.Errorf("console: %w", err)
	}
	if offset < 0 {
		offset = l.end + offset
	}
	offset = min(max(offset, l.start), l.end)
	c := Chunk{Offset: offset, End: l.end}
	want := min(int64(maxBytes), l.end-offset)
	if want <= 0 {
		return c, nil
	}
	c.Data = make([]byte, 0, want)
	read := func(name string, from, to int64) error {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		defer f.Close()
		buf := make([]byte, to-from)
		n, err := f.ReadAt(buf, from)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		c.Data = append(c.Data, buf[:n]...)
		return err
	}
	if offset < l.base {
		to := min(l.base, offset+want)
		if err := read(RotatedFile, offset-l.start, to-l.start); err != nil {
			return Chunk{}, fmt.Errorf("console: %w", err)
		}
	}
	if from := max(offset, l.base); from < offset+want {
		if err := read(File, from-l.base, offset+want-l.base); err != nil {
			return Chunk{}, fmt.Errorf("console: %w", err)
		}
	}
	return c, nil
}

// Rotate rotates the console in dir when console.log is over maxBytes. It
// reports whether it rotated and whether the rotation was lossless.
func Rotate(dir string, maxBytes int64) (rotated, lossless bool, err error) {
	if maxBytes <= 0 {
		return false, false, fmt.Errorf("console cap %d: must be positive", maxBytes)
	}
	mu := lockOf(dir)
	mu.Lock()
	defer mu.Unlock()
	path := filepath.Join(dir, File)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return false, false, nil
	}
	if err != nil {
		return false, false, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false, false, err
	}
	if st.Size <= maxBytes {
		return false, false, nil
	}
	base, err := readBase(dir)
	if err != nil {
		return false, false, err
	}
	tmp := filepath.Join(dir, RotatedFile+".tmp")
	defer os.Remove(tmp)

	// Lossless: cut whole blocks from the start; keep the tail (the range
	// may not reach the end of the file).
	if blk := int64(st.Blksize); blk > 0 {
		if k := (st.Size - 1) / blk * blk; k > 0 {
			if err := copyPrefix(f, tmp, k); err != nil {
				return false, false, err
			}
			err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_COLLAPSE_RANGE, 0, k)
			if err == nil {
				return true, true, finish(dir, tmp, base+k)
			}
			if !errors.Is(err, syscall.EOPNOTSUPP) && !errors.Is(err, syscall.EINVAL) {
				return false, false, fmt.Errorf("collapse console log: %w", err)
			}
		}
	}
	// Copy-truncate: copy to EOF until it stops growing, then truncate.
	out, err := os.Create(tmp)
	if err != nil {
		return false, false, err
	}
	var n int64
	for {
		c, err := io.Copy(out, io.NewSectionReader(f, n, 1<<62))
		if err != nil {
			out.Close()
			return false, false, err
		}
		n += c
		if c == 0 {
			break
		}
	}
	if err := out.Close(); err != nil {
		return false, false, err
	}
	if err := f.Truncate(0); err != nil {
		return false, false, err
	}
	return true, false, finish(dir, tmp, base+n)
}

// copyPrefix copies the first n bytes of f to a new file at path.
func copyPrefix(f *os.File, path string, n int64) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, io.NewSectionReader(f, 0, n))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// finish installs the rotated copy and the new base offset.
func finish(dir, tmp string, base int64) error {
	if err := os.Rename(tmp, filepath.Join(dir, RotatedFile)); err != nil {
		return err
	}
	otmp := filepath.Join(dir, OffsetFile+".tmp")
	if err := os.WriteFile(otmp, []byte(strconv.FormatInt(base, 10)+"\n"), 0o640); err != nil {
		return err
	}
	return os.Rename(otmp, filepath.Join(dir, OffsetFile))
}

// Rotator keeps every VM console under root (folders
// root/<namespace>/<name>/<uid>) within a size cap.
type Rotator struct {
	Root     string
	MaxBytes int64
	// Interval between checks; 1s when 0.
	Interval time.Duration
	Logger   *slog.Logger
}

// Run checks every console each interval until ctx ends.
func (r Rotator) Run(ctx context.Context) {
	if r.Interval <= 0 {
		r.Interval = time.Second
	}
	if r.Logger == nil {
		r.Logger = slog.Default()
	}
	t := time.NewTicker(r.Interval)
	defer t.Stop()
	for {
		r.Once()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Once checks every console once.
func (r Rotator) Once() {
	paths, _ := filepath.Glob(filepath.Join(r.Root, "*", "*", "*", File))
	for _, p := range paths {
		dir := filepath.Dir(p)
		rotated, lossless, err := Rotate(dir, r.MaxBytes)
		switch {
		case err != nil:
			r.Logger.Warn("console rotation failed", "dir", dir, "err", err)
		case rotated && !lossless:
			r.Logger.Debug("console rotated by copy-truncate", "dir", dir)
		}
	}
}
