package volumes

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	diskfs "github.com/diskfs/go-diskfs"
)

// ExtractPartition writes partition number n (1-based, as in the
// partition table, MBR or GPT) of the disk image diskPath to dst,
// atomically and sparsely. With sizeMB larger than the partition the file
// is grown and its ext2/3/4 filesystem resized to fill it; a smaller size
// is errdefs.ErrInvalidArgument.
func ExtractPartition(ctx context.Context, diskPath string, n int, dst string, sizeMB int) error {
	d, err := diskfs.Open(diskPath, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return fmt.Errorf("disk image %s: %w", diskPath, err)
	}
	defer d.Close()
	table, err := d.GetPartitionTable()
	if err != nil {
		return fmt.Errorf("disk image %s has no partition table: %w: %w", diskPath, errdefs.ErrInvalidArgument, err)
	}
	parts := table.GetPartitions()
	if n < 1 || n > len(parts) || parts[n-1] == nil || parts[n-1].GetSize() <= 0 {
		return fmt.Errorf("disk image %s has no partition %d: %w", diskPath, n, errdefs.ErrInvalidArgument)
	}
	start, size := parts[n-1].GetStart(), parts[n-1].GetSize()
	if sizeMB > 0 && int64(sizeMB)*mib < size {
		return fmt.Errorf("size_in_mb %d is smaller than partition %d (%d MiB): %w", sizeMB, n, (size+mib-1)/mib, errdefs.ErrInvalidArgument)
	}
	in, err := os.Open(diskPath)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeAtomic(dst, func(tmp *os.File) error {
		if err := tmp.Truncate(size); err != nil {
			return err
		}
		if err := copySparse(io.NewSectionReader(in, start, size), tmp); err != nil {
			return err
		}
		if sizeMB == 0 || int64(sizeMB)*mib == size {
			return nil
		}
		if err := tmp.Truncate(int64(sizeMB) * mib); err != nil {
			return err
		}
		return Resize2fs(ctx, tmp.Name())
	})
}

// copySparse copies r to w at the same offsets, leaving all-zero blocks as
// holes (w is a fresh file of the right size).
func copySparse(r io.Reader, w io.WriterAt) error {
	buf := make([]byte, mib)
	zero := make([]byte, mib)
	var off int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 && !bytes.Equal(buf[:n], zero[:n]) {
			if _, werr := w.WriteAt(buf[:n], off); werr != nil {
				return werr
			}
		}
		off += int64(n)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Resize2fs grows the ext2/3/4 filesystem in the file at path to the file's
// size (checking it first, as resize2fs requires).
func Resize2fs(ctx context.Context, path string) error {
	for _, c := range [][]string{{"e2fsck", "-f", "-y", path}, {"resize2fs", "-f", path}} {
		bin, err := lookSbin(c[0])
		if err != nil {
			return err
		}
		out, err := exec.CommandContext(ctx, bin, c[1:]...).CombinedOutput()
		if err != nil {
			// e2fsck exits 1 when it corrected something: still fine.
			if ee, ok := err.(*exec.ExitError); ok && c[0] == "e2fsck" && ee.ExitCode() == 1 {
				continue
			}
			return fmt.Errorf("%s %s: %w: %s", c[0], path, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

func lookSbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		p := d + "/" + name
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (install e2fsprogs): %w", name, errdefs.ErrFailedPrecondition)
}

// PartitionNumber parses a partition_id ("1", "2", ...).
func PartitionNumber(id string) (int, error) {
	n, err := strconv.Atoi(id)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("partition_id %q is not a positive integer: %w", id, errdefs.ErrInvalidArgument)
	}
	return n, nil
}
