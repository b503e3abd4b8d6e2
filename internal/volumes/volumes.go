// Package volumes builds the file-backed block images flintlockd gives to
// VMs: ext4 filesystem images filled from a folder (mkfs.ext4 -d) on sparse
// files, or a partition taken out of a disk image, built once per image and
// size as base images (Provisioner), from which each VM gets its own
// copy-on-write volume: a reflink clone, a qcow2 overlay, a devmapper thin
// snapshot or a sparse copy (cow.go). It also collects unused base images
// (gc.go). Every file is written to a temporary file and renamed into
// place, so a half-built image never appears under its final name.
package volumes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
)

const (
	mib       = 1 << 20
	blockSize = 4096
	inodeSize = 256
	// inodeRatio is the bytes-per-inode density every image gets at least.
	inodeRatio = 16384
	// maxLabel is the length limit of an ext4 volume label.
	maxLabel = 16
)

// Mkfs is the mkfs.ext4 binary (e2fsprogs 1.43 or later, for -d). It is
// looked up in PATH and the sbin folders when not absolute.
var Mkfs = "mkfs.ext4"

func mkfsPath() (string, error) {
	if p, err := exec.LookPath(Mkfs); err == nil {
		return p, nil
	}
	if !filepath.IsAbs(Mkfs) {
		for _, d := range []string{"/usr/sbin", "/sbin"} {
			p := filepath.Join(d, Mkfs)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("%s not found (install e2fsprogs): %w", Mkfs, errdefs.ErrFailedPrecondition)
}

// Content is what a folder tree needs in an ext4 filesystem.
type Content struct {
	// Inodes counts files, folders, links and special files (hard links
	// once), the root included.
	Inodes int64
	// DataBytes is the space of file data, folder blocks and long
	// symbolic links, in whole 4 KiB blocks.
	DataBytes int64
}

// MeasureTree walks srcDir (without following symbolic links) and returns
// what its tree needs.
func MeasureTree(srcDir string) (Content, error) {
	fi, err := os.Stat(srcDir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Content{}, fmt.Errorf("volume source %s: %w", srcDir, errdefs.ErrNotFound)
		}
		return Content{}, fmt.Errorf("volume source: %w", err)
	}
	if !fi.IsDir() {
		return Content{}, fmt.Errorf("volume source %s is not a folder: %w", srcDir, errdefs.ErrInvalidArgument)
	}
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	dirBytes := map[string]int64{}
	var c Content
	err = filepath.WalkDir(srcDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != srcDir {
			// The entry in its parent folder: 8 bytes + the name, 4-aligned.
			dirBytes[filepath.Dir(p)] += 8 + int64(len(d.Name())+3)&^3
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && !info.IsDir() && st.Nlink > 1 {
			k := inode{uint64(st.Dev), st.Ino}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		c.Inodes++
		switch {
		case info.Mode().IsRegular():
			blocks := blocksFor(info.Size())
			// Files past 4 extents (128 MiB each) need extent tree blocks.
			blocks += blocks / 32768
			c.DataBytes += blocks * blockSize
		case info.Mode()&fs.ModeSymlink != 0:
			// Targets under 60 bytes live in the inode.
			if info.Size() >= 60 {
				c.DataBytes += blockSize
			}
		case info.IsDir():
			dirBytes[p] += 24 // "." and ".."
		}
		return nil
	})
	if err != nil {
		return Content{}, fmt.Errorf("measuring %s: %w", srcDir, err)
	}
	for _, b := range dirBytes {
		// A quarter more for partly filled blocks and hashed-index blocks.
		c.DataBytes += blocksFor(b+b/4) * blockSize
	}
	return c, nil
}

func blocksFor(n int64) int64 { return (n + blockSize - 1) / blockSize }

// journalBlocks is the journal size e2fsprogs gives by default to an image
// of the given number of 4 KiB blocks (none under 16 MiB here, where it
// would take more than a quarter of the image).
func journalBlocks(blocks int64) int64 {
	switch {
	case blocks < 4096:
		return 0
	case blocks < 32768:
		return 1024
	case blocks < 256*1024:
		return 4096
	case blocks < 512*1024:
		return 8192
	case blocks < 4096*1024:
		return 16384
	case blocks < 8192*1024:
		return 32768
	case blocks < 16384*1024:
		return 65536
	case blocks < 32768*1024:
		return 131072
	default:
		return 262144
	}
}

// inodeCount is the number of inodes given to an image of size bytes
// holding c: room for the content plus a quarter, and at least one inode
// per 16 KiB.
func inodeCount(size int64, c Content) int64 {
	n := c.Inodes + c.Inodes/4 + 64
	if d := size / inodeRatio; d > n {
		n = d
	}
	return n
}

// overheadBytes estimates ext4's own space in an image of size bytes,
// journal aside: inode tables, per-group bitmaps, descriptors, superblock
// backups, the blocks reserved for growth, and allocation slack.
func overheadBytes(size int64, c Content) int64 {
	groups := (size/blockSize + 32767) / 32768
	return inodeCount(size, c)*inodeSize +
		groups*64*blockSize +
		size/50 +
		2*mib
}

// fits tells whether c fits an image of size bytes with a journal of
// journal blocks.
func fits(size, journal int64, c Content) bool {
	return c.DataBytes+overheadBytes(size, c)+journal*blockSize <= size
}

// journalFor is the journal an image of size bytes holding c gets: the
// default one, halved while it does not leave room for c, down to none.
func journalFor(size int64, c Content) int64 {
	j := journalBlocks(size / blockSize)
	for j > 0 && !fits(size, j, c) {
		j /= 2
		if j < 1024 {
			j = 0
		}
	}
	return j
}

// smallestMB returns a size in MiB for which ok holds and not for the size
// just below it: the smallest one when ok holds for every larger size.
func smallestMB(c Content, ok func(mb int64) bool) int64 {
	mb := (c.DataBytes + mib - 1) / mib
	// Converge from below, then step up.
	for i := 0; i < 20 && !ok(mb); i++ {
		mb = (c.DataBytes + overheadBytes(mb*mib, c) + journalBlocks(mb*mib/blockSize)*blockSize + mib - 1) / mib
	}
	for mb > 1 && ok(mb-1) {
		mb--
	}
	for !ok(mb) {
		mb++
	}
	return mb
}

// MinimumSizeMB returns the smallest image size, in MiB, that holds c (with
// a smaller journal, or none, when the default one does not fit). Every
// larger size holds it too.
func MinimumSizeMB(c Content) int {
	return int(smallestMB(c, func(mb int64) bool { return fits(mb*mib, 0, c) }))
}

// DefaultSizeMB is the size BuildExt4 gives when asked for none: the
// smallest that holds c with the default journal, plus a tenth (at least
// 8 MiB) of free space.
func DefaultSizeMB(c Content) int {
	mb := smallestMB(c, func(mb int64) bool { return fits(mb*mib, journalBlocks(mb*mib/blockSize), c) })
	free := mb / 10
	if free < 8 {
		free = 8
	}
	return int(mb + free)
}

// BuildExt4 makes dst an ext4 filesystem image of sizeMB MiB labelled label
// holding a copy of the tree under srcDir (owners, modes, links and special
// files kept). With sizeMB 0 the size is DefaultSizeMB of the tree. A size
// too small for the tree is errdefs.ErrInvalidArgument. The file is sparse:
// it takes only the space its content uses.
func BuildExt4(ctx context.Context, srcDir, dst string, sizeMB int, label string) error {
	if sizeMB < 0 {
		return fmt.Errorf("size_in_mb %d: %w", sizeMB, errdefs.ErrInvalidArgument)
	}
	if len(label) > maxLabel {
		return fmt.Errorf("volume label %q is longer than %d bytes: %w", label, maxLabel, errdefs.ErrInvalidArgument)
	}
	mkfs, err := mkfsPath()
	if err != nil {
		return err
	}
	content, err := MeasureTree(srcDir)
	if err != nil {
		return err
	}
	min := MinimumSizeMB(content)
	if sizeMB == 0 {
		sizeMB = DefaultSizeMB(content)
	} else if sizeMB < min {
		return fmt.Errorf("size_in_mb %d is smaller than the image content (%d MiB): %w", sizeMB, min, errdefs.ErrInvalidArgument)
	}
	size := int64(sizeMB) * mib

	return writeAtomic(dst, func(tmp *os.File) error {
		if err := tmp.Truncate(size); err != nil {
			return err
		}
		args := []string{"-F", "-q", "-t", "ext4",
			"-b", strconv.Itoa(blockSize),
			"-I", strconv.Itoa(inodeSize),
			"-N", strconv.FormatInt(inodeCount(size, content), 10),
			// The file is new and sparse, so it reads as zeros already.
			"-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
			"-L", label,
			"-d", srcDir,
		}
		if j := journalFor(size, content); j > 0 {
			args = append(args, "-J", "size="+strconv.FormatInt(j*blockSize/mib, 10))
		} else {
			args = append(args, "-O", "^has_journal")
		}
		args = append(args, tmp.Name())
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, mkfs, args...)
		cmd.Stdout = &stderr
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			out := strings.TrimSpace(stderr.String())
			if strings.Contains(out, "Could not allocate") || strings.Contains(out, "No space left") {
				return fmt.Errorf("size_in_mb %d is too small for the content of %s: %w: %s", sizeMB, srcDir, errdefs.ErrInvalidArgument, out)
			}
			return fmt.Errorf("mkfs.ext4 -d %s: %w: %s", srcDir, err, out)
		}
		return nil
	})
}

// writeAtomic creates a temporary file next to dst, lets fill write it,
// syncs it and renames it to dst; on failure the temporary file goes.
func writeAtomic(dst string, fill func(tmp *os.File) error) (retErr error) {
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return fmt.Errorf("volume %s: %w", dst, err)
	}
	defer func() {
		if retErr != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := fill(tmp); err != nil {
		return fmt.Errorf("volume %s: %w", dst, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("volume %s: %w", dst, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("volume %s: %w", dst, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("volume %s: %w", dst, err)
	}
	return nil
}
