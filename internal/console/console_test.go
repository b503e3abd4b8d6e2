package console

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// writeLines appends numbered lines to dir's console through an O_APPEND
// descriptor, as a VMM does, until stop is set; it returns what it wrote.
func writeLines(t *testing.T, dir string, stop *atomic.Bool) <-chan []byte {
	done := make(chan []byte, 1)
	f, err := os.OpenFile(filepath.Join(dir, File), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer f.Close()
		var all bytes.Buffer
		for i := 0; !stop.Load(); i++ {
			line := fmt.Sprintf("line %06d %s\n", i, strings.Repeat("x", i%97))
			if _, err := f.WriteString(line); err != nil {
				t.Error(err)
				break
			}
			all.WriteString(line)
			if i%50 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		done <- all.Bytes()
	}()
	return done
}

// follow reads dir's console from offset 0 as it grows, as StreamConsole
// does, until stop is set and the end is reached.
func follow(t *testing.T, dir string, stop *atomic.Bool) []byte {
	var got bytes.Buffer
	var off int64
	for {
		c, err := Read(dir, off, 1<<16)
		if err != nil {
			t.Fatal(err)
		}
		if c.Offset != off {
			t.Fatalf("output from %d to %d was rotated away before it was read", off, c.Offset)
		}
		got.Write(c.Data)
		off += int64(len(c.Data))
		if len(c.Data) == 0 {
			if stop.Load() {
				if c2, _ := Read(dir, off, 1); len(c2.Data) == 0 {
					return got.Bytes()
				}
				continue
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// rotateWhileWriting rotates the console under a live O_APPEND writer and
// a following reader and returns what was written and what was read.
func rotateWhileWriting(t *testing.T, dir string, maxBytes int64) (written, read []byte, rotations int, lossless bool) {
	var stop atomic.Bool
	w := writeLines(t, dir, &stop)
	readDone := make(chan []byte, 1)
	go func() { readDone <- follow(t, dir, &stop) }()
	lossless = true
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		r, ll, err := Rotate(dir, maxBytes)
		if err != nil {
			t.Fatal(err)
		}
		if r {
			rotations++
			lossless = lossless && ll
		}
		time.Sleep(2 * time.Millisecond)
	}
	stop.Store(true)
	written = <-w
	read = <-readDone
	return written, read, rotations, lossless
}

// TestRotateLosslessUnderWriter: on ext4 (the test folder's file system)
// rotation collapses the file under an appending writer; a reader that
// keeps up sees every byte exactly once, in order, across rotations.
func TestRotateLosslessUnderWriter(t *testing.T) {
	dir := t.TempDir()
	written, read, rotations, lossless := rotateWhileWriting(t, dir, 64<<10)
	if rotations < 3 {
		t.Fatalf("only %d rotations of %d bytes", rotations, len(written))
	}
	if !lossless {
		t.Skip("SKIPPED: the test folder's file system lacks FALLOC_FL_COLLAPSE_RANGE")
	}
	if !bytes.Equal(read, written) {
		t.Fatalf("read %d bytes, wrote %d; first difference at %d", len(read), len(written), firstDiff(read, written))
	}
	// The files hold the tail of the output: console.log within the cap
	// (plus what arrived since the last check), console.log.1 before it.
	fi, err := os.Stat(filepath.Join(dir, File))
	if err != nil {
		t.Fatal(err)
	}
	base, err := readBase(dir)
	if err != nil || base+fi.Size() != int64(len(written)) {
		t.Fatalf("base %d + size %d != written %d (%v)", base, fi.Size(), len(written), err)
	}
	rot, err := os.ReadFile(filepath.Join(dir, RotatedFile))
	if err != nil || !bytes.Equal(rot, written[base-int64(len(rot)):base]) {
		t.Fatalf("console.log.1 is not the output before offset %d (%v)", base, err)
	}
	// Reading from the start skips to the oldest retained byte.
	c, err := Read(dir, 0, 10)
	if err != nil || c.Offset != base-int64(len(rot)) || !bytes.Equal(c.Data, written[c.Offset:c.Offset+10]) {
		t.Fatalf("read from 0: offset %d data %q (%v)", c.Offset, c.Data, err)
	}
	// A negative offset counts from the end, across the two files.
	n := fi.Size() + 100
	c, err = Read(dir, -n, int(n))
	if err != nil || c.Offset != int64(len(written))-n || !bytes.Equal(c.Data, written[len(written)-int(n):]) {
		t.Fatalf("read last %d bytes: offset %d, %d bytes (%v)", n, c.Offset, len(c.Data), err)
	}
	// Beyond the end reads nothing, at the end.
	c, err = Read(dir, int64(len(written))+5, 10)
	if err != nil || len(c.Data) != 0 || c.Offset != int64(len(written)) || c.End != int64(len(written)) {
		t.Fatalf("read past the end: %+v %v", c, err)
	}
}

// TestRotateCopyTruncateOnTmpfs: without COLLAPSE_RANGE (tmpfs) rotation
// falls back to copy-truncate, keeps the writer writing into console.log
// and keeps offsets consistent.
func TestRotateCopyTruncateOnTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: mounting tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	written, read, rotations, lossless := rotateWhileWriting(t, dir, 64<<10)
	if rotations < 3 || lossless {
		t.Fatalf("%d rotations, lossless %v: want copy-truncate rotations", rotations, lossless)
	}
	fi, err := os.Stat(filepath.Join(dir, File))
	if err != nil {
		t.Fatal(err)
	}
	base, _ := readBase(dir)
	// Loss is possible but only of whole writes between copy and truncate:
	// the read stream is the written stream with few lines missing.
	if int64(len(read)) != base+fi.Size() || len(read) > len(written) || len(read) < len(written)*9/10 {
		t.Fatalf("read %d, wrote %d, base %d size %d", len(read), len(written), base, fi.Size())
	}
	if !bytes.HasSuffix(written, read[len(read)-int(fi.Size()):]) {
		t.Fatal("console.log does not hold the latest output")
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
