package volumes

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/mbr"
)

// TestExtractPartition: partition 2 of an MBR disk holding an ext4
// filesystem comes out as that filesystem, grown to the size asked for;
// a missing partition or a too small size is InvalidArgument.
func TestExtractPartition(t *testing.T) {
	requireTools(t)
	dir := t.TempDir()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "hello"), []byte("from partition"), 0o644); err != nil {
		t.Fatal(err)
	}
	fsImg := filepath.Join(dir, "fs.img")
	if err := BuildExt4(context.Background(), src, fsImg, 16, "part2"); err != nil {
		t.Fatal(err)
	}
	diskPath := filepath.Join(dir, "disk.img")
	d, err := diskfs.Create(diskPath, 40<<20, diskfs.SectorSizeDefault)
	if err != nil {
		t.Fatal(err)
	}
	table := &mbr.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, Partitions: []*mbr.Partition{
		{Type: mbr.Linux, Start: 2048, Size: 8 << 11},          // 8 MiB, empty
		{Type: mbr.Linux, Start: 2048 + 8<<11, Size: 16 << 11}, // 16 MiB: the filesystem
	}}
	if err := d.Partition(table); err != nil {
		t.Fatal(err)
	}
	fs, err := os.ReadFile(fsImg)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(diskPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(fs, (2048+8<<11)*512); err != nil {
		t.Fatal(err)
	}
	f.Close()
	d.Close()

	out := filepath.Join(dir, "out.img")
	if err := ExtractPartition(context.Background(), diskPath, 2, out, 32); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(out); fi.Size() != 32<<20 {
		t.Fatalf("size %d, want 32 MiB", fi.Size())
	}
	if got := debugfsCat(t, out, "/hello"); got != "from partition" {
		t.Fatalf("/hello = %q", got)
	}
	if err := ExtractPartition(context.Background(), diskPath, 3, out, 0); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("partition 3: %v", err)
	}
	if err := ExtractPartition(context.Background(), diskPath, 2, out, 8); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("8 MiB for a 16 MiB partition: %v", err)
	}
}
