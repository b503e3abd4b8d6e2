package metadata

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// sampleDocs has what cloud-init needs plus names and contents that a
// careless ISO writer would mangle: hyphens, mixed case, a long name, an
// empty file, binary bytes, and a file larger than one 2 KiB block.
func sampleDocs(t testing.TB) map[string][]byte {
	bin := make([]byte, 5000)
	if _, err := rand.Read(bin); err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{
		MetaData:                                 []byte("instance_id: 01HXYZ\ninstance-id: 01HXYZ\nlocal-hostname: vm1\n"),
		UserData:                                 []byte("#cloud-config\nruncmd:\n  - echo hello\n"),
		VendorData:                               {},
		NetworkConfig:                            []byte("version: 2\nethernets: {}\n"),
		"Extra.File_name-with.MixedCase":         []byte("mixed\n"),
		strings.Repeat("long-name-", 12) + "end": []byte("long\n"),
		"blob.bin":                               bin,
	}
}

func TestWriteCIDataDiskReadBackInLinux(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: needs root")
	}
	docs := sampleDocs(t)
	dst := filepath.Join(t.TempDir(), "cidata.img")
	if err := WriteCIDataDisk(docs, dst); err != nil {
		t.Fatalf("WriteCIDataDisk: %v", err)
	}
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("image mode %v, want 0600", fi.Mode().Perm())
	}
	// Sized to content: the 16 system blocks, descriptors, directory, path
	// tables, and the files rounded to 2 KiB blocks.
	var content int64
	for _, d := range docs {
		content += (int64(len(d)) + isoBlockSize - 1) / isoBlockSize * isoBlockSize
	}
	if limit := max(content+32*isoBlockSize, minDiskSize); fi.Size() > limit {
		t.Errorf("image is %d bytes for %d bytes of files; want at most %d", fi.Size(), content, limit)
	}
	if fi.Size() < minDiskSize {
		t.Errorf("image is %d bytes; label probers need at least %d", fi.Size(), minDiskSize)
	}
	t.Logf("image: %d bytes", fi.Size())

	t.Run("guest-isofs", func(t *testing.T) {
		compareFiles(t, docs, readInGuest(t, dst))
	})

	// The test guest (and minimal initrds) find the disk with busybox
	// findfs, which misses labels on too small devices.
	t.Run("busybox-findfs", func(t *testing.T) {
		if _, err := exec.LookPath("busybox"); err != nil {
			t.Skip("SKIPPED: busybox not installed")
		}
		out, err := exec.Command("losetup", "-f", "--show", "-r", dst).Output()
		if err != nil {
			t.Skipf("SKIPPED: no loop device: %v", err)
		}
		dev := strings.TrimSpace(string(out))
		defer exec.Command("losetup", "-d", dev).Run()
		got, err := exec.Command("busybox", "findfs", "LABEL="+VolumeLabel).Output()
		if err != nil || strings.TrimSpace(string(got)) != dev {
			t.Errorf("busybox findfs LABEL=%s: %q, %v; want %s", VolumeLabel, got, err, dev)
		}
	})

	// cloud-init finds the disk with blkid (util-linux): TYPE iso9660 or
	// vfat and LABEL cidata.
	t.Run("blkid", func(t *testing.T) {
		if _, err := exec.LookPath("blkid"); err != nil {
			t.Skipf("SKIPPED: blkid (util-linux) is not installed: %v", err)
		}
		out, err := exec.Command("blkid", "-p", "-o", "export", dst).CombinedOutput()
		if err != nil {
			t.Fatalf("blkid: %v: %s", err, out)
		}
		for _, want := range []string{"TYPE=iso9660", "LABEL=cidata"} {
			if !slices.Contains(strings.Split(string(out), "\n"), want) {
				t.Errorf("blkid -p -o export: no %s in:\n%s", want, out)
			}
		}
	})

	t.Run("host-loop-mount", func(t *testing.T) {
		if !hostHasFilesystem("iso9660") {
			t.Skip("SKIPPED: the host kernel has no iso9660 driver (not in /proc/filesystems); the guest-isofs subtest read the image with Linux's driver instead")
		}
		mnt := t.TempDir()
		if out, err := exec.Command("mount", "-o", "loop,ro", "-t", "iso9660", dst, mnt).CombinedOutput(); err != nil {
			t.Fatalf("mount: %v: %s", err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
				t.Errorf("umount: %v: %s", err, out)
			}
		})
		got := map[string][]byte{}
		entries, err := os.ReadDir(mnt)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(mnt, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			got[e.Name()] = b
		}
		compareFiles(t, docs, got)
	})
}

func hostHasFilesystem(name string) bool {
	b, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[len(f)-1] == name {
			return true
		}
	}
	return false
}

func compareFiles(t *testing.T, want, got map[string][]byte) {
	t.Helper()
	var wantNames, gotNames []string
	for n := range want {
		wantNames = append(wantNames, n)
	}
	for n := range got {
		gotNames = append(gotNames, n)
	}
	slices.Sort(wantNames)
	slices.Sort(gotNames)
	if !slices.Equal(wantNames, gotNames) {
		t.Fatalf("file names on the disk:\n got %q\nwant %q", gotNames, wantNames)
	}
	for _, n := range wantNames {
		if !bytes.Equal(want[n], got[n]) {
			t.Errorf("%s: read back %d bytes that differ from the %d written", n, len(got[n]), len(want[n]))
		}
	}
}

func TestWriteCIDataDiskReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "cidata.img")
	docs := sampleDocs(t)
	if err := WriteCIDataDisk(docs, dst); err != nil {
		t.Fatal(err)
	}
	first, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	docs[UserData] = []byte("#cloud-config\nruncmd:\n  - echo changed\n")
	if err := WriteCIDataDisk(docs, dst); err != nil {
		t.Fatal(err)
	}
	second, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(first, second) {
		t.Error("rewriting with different user-data left the image unchanged")
	}
	if !bytes.Contains(second, []byte("echo changed")) {
		t.Error("new user-data not found in the rewritten image")
	}

	// A failed write leaves the old image and no temporary files behind.
	bad := map[string][]byte{MetaData: {}, UserData: {}, "../escape": {}}
	if err := WriteCIDataDisk(bad, dst); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("unsafe name: got %v, want ErrInvalidArgument", err)
	}
	if err := WriteCIDataDisk(map[string][]byte{MetaData: {}}, dst); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("no user-data: got %v, want ErrInvalidArgument", err)
	}
	if err := WriteCIDataDisk(docs, filepath.Join(dir, "missing", "cidata.img")); err == nil {
		t.Error("writing into a missing folder succeeded")
	}
	third, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(second, third) {
		t.Error("failed writes changed the installed image")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "cidata.img" {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("folder holds %q, want only cidata.img", names)
	}
}

func BenchmarkWriteCIDataDisk(b *testing.B) {
	docs := sampleDocs(b)
	dst := filepath.Join(b.TempDir(), "cidata.img")
	b.ResetTimer()
	for b.Loop() {
		if err := WriteCIDataDisk(docs, dst); err != nil {
			b.Fatal(err)
		}
	}
}
