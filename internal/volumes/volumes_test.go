package volumes

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
)

func requireTools(t testing.TB) {
	t.Helper()
	if _, err := mkfsPath(); err != nil {
		t.Skipf("SKIPPED: %v", err)
	}
	for _, tool := range []string{"debugfs", "e2fsck", "e2label"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIPPED: %s (e2fsprogs) is missing: %v", tool, err)
		}
	}
}

// tree makes a small root-like tree: files of several sizes, a symbolic
// link, a hard link, an empty folder, odd owners and modes.
func tree(t testing.TB) (dir string, big []byte) {
	t.Helper()
	dir = t.TempDir()
	big = make([]byte, 3<<20+123)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "etc"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "var/empty"), 0o700))
	must(os.WriteFile(filepath.Join(dir, "etc/hostname"), []byte("node1\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "bin/big"), big, 0o755))
	must(os.Symlink("big", filepath.Join(dir, "bin/small-link")))
	must(os.Link(filepath.Join(dir, "bin/big"), filepath.Join(dir, "bin/hard")))
	must(os.WriteFile(filepath.Join(dir, "etc/shadow"), []byte("secret\n"), 0o640))
	must(os.Chown(filepath.Join(dir, "etc/shadow"), 1234, 5678))
	return dir, big
}

func debugfs(t testing.TB, img, request string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", request, img).Output()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v", request, err)
	}
	return string(out)
}

func TestBuildExt4(t *testing.T) {
	requireTools(t)
	src, big := tree(t)
	dst := filepath.Join(t.TempDir(), "root.img")
	if err := BuildExt4(context.Background(), src, dst, 0, "rootfs"); err != nil {
		t.Fatal(err)
	}

	if out, err := exec.Command("e2fsck", "-fn", dst).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck: %v\n%s", err, out)
	}
	if out, err := exec.Command("e2label", dst).Output(); err != nil || strings.TrimSpace(string(out)) != "rootfs" {
		t.Errorf("label %q, %v", out, err)
	}
	if got := debugfs(t, dst, "cat /etc/hostname"); got != "node1\n" {
		t.Errorf("/etc/hostname: %q", got)
	}
	if got := debugfs(t, dst, "cat /bin/big"); !bytes.Equal([]byte(got), big) {
		t.Errorf("/bin/big differs: %d bytes, want %d", len(got), len(big))
	}
	if got := debugfs(t, dst, "stat /bin/small-link"); !strings.Contains(got, `Fast link dest: "big"`) {
		t.Errorf("/bin/small-link: %s", got)
	}
	// Hard links stay one inode.
	if a, b := debugfs(t, dst, "stat /bin/big"), debugfs(t, dst, "stat /bin/hard"); !strings.Contains(a, "Links: 2") || firstLine(a) != firstLine(b) {
		t.Errorf("/bin/hard is not a hard link of /bin/big:\n%s\n%s", firstLine(a), firstLine(b))
	}
	shadow := debugfs(t, dst, "stat /etc/shadow")
	if !strings.Contains(shadow, "User:  1234") || !strings.Contains(shadow, "Group:  5678") || !strings.Contains(shadow, "Mode:  0640") {
		t.Errorf("/etc/shadow owner or mode lost:\n%s", shadow)
	}
	if got := debugfs(t, dst, "stat /var/empty"); !strings.Contains(got, "Type: directory") || !strings.Contains(got, "Mode:  0700") {
		t.Errorf("/var/empty:\n%s", got)
	}

	// The default size is the estimate plus free space, and the file is
	// sparse.
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	c, err := MeasureTree(src)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(DefaultSizeMB(c)) * mib; fi.Size() != want {
		t.Errorf("size %d, want %d", fi.Size(), want)
	}
	if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used >= fi.Size()/2 {
		t.Errorf("image uses %d of %d bytes: not sparse", used, fi.Size())
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("image mode %v, want 0600", fi.Mode().Perm())
	}
	assertNoTemp(t, filepath.Dir(dst), 1)
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }

func TestBuildExt4ExplicitSize(t *testing.T) {
	requireTools(t)
	src, _ := tree(t)
	dst := filepath.Join(t.TempDir(), "root.img")
	if err := BuildExt4(context.Background(), src, dst, 64, ""); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 64*mib {
		t.Errorf("size %d, want 64 MiB", fi.Size())
	}
	if out, err := exec.Command("e2fsck", "-fn", dst).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck: %v\n%s", err, out)
	}
}

func TestBuildExt4TooSmall(t *testing.T) {
	requireTools(t)
	src, _ := tree(t)
	dst := filepath.Join(t.TempDir(), "root.img")
	// An earlier image stays untouched by a failed build.
	if err := os.WriteFile(dst, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := BuildExt4(context.Background(), src, dst, 2, "root")
	if !errdefs.IsInvalidArgument(err) {
		t.Fatalf("want invalid argument, got %v", err)
	}
	c, _ := MeasureTree(src)
	want := fmt.Sprintf("size_in_mb 2 is smaller than the image content (%d MiB)", MinimumSizeMB(c))
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
	if b, _ := os.ReadFile(dst); string(b) != "old" {
		t.Errorf("dst changed by a failed build: %q", b)
	}
	assertNoTemp(t, filepath.Dir(dst), 1)

	// The minimum itself is enough.
	if err := BuildExt4(context.Background(), src, dst, MinimumSizeMB(c), "root"); err != nil {
		t.Fatalf("building at the minimum size: %v", err)
	}
}

// TestMinimumSizeFits builds trees of different shapes at exactly their
// estimated minimum size: many small files, many folders, one large file.
func TestMinimumSizeFits(t *testing.T) {
	requireTools(t)
	shapes := map[string]func(dir string) error{
		"empty": func(string) error { return nil },
		"small-files": func(dir string) error {
			for i := 0; i < 3000; i++ {
				d := filepath.Join(dir, fmt.Sprint(i%30))
				if err := os.MkdirAll(d, 0o755); err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("a-file-with-a-long-name-%d.conf", i)), []byte("x=1\n"), 0o644); err != nil {
					return err
				}
			}
			return nil
		},
		"large-file": func(dir string) error {
			b := make([]byte, 20<<20)
			if _, err := rand.Read(b); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, "blob"), b, 0o644)
		},
		// Where the default journal starts (16 MiB) and would not fit.
		"journal-edge": func(dir string) error {
			b := make([]byte, 13<<20)
			if _, err := rand.Read(b); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, "blob"), b, 0o644)
		},
	}
	for name, mk := range shapes {
		t.Run(name, func(t *testing.T) {
			src := t.TempDir()
			if err := mk(src); err != nil {
				t.Fatal(err)
			}
			c, err := MeasureTree(src)
			if err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(t.TempDir(), "img")
			// The minimum and every size above it hold the tree.
			min := MinimumSizeMB(c)
			for size := min; size < min+6; size++ {
				if err := BuildExt4(context.Background(), src, dst, size, "x"); err != nil {
					t.Fatalf("content %+v, minimum %d MiB, size %d MiB: %v", c, min, size, err)
				}
				if out, err := exec.Command("e2fsck", "-fn", dst).CombinedOutput(); err != nil {
					t.Fatalf("e2fsck: %v\n%s", err, out)
				}
			}
			if err := BuildExt4(context.Background(), src, dst, 0, "x"); err != nil {
				t.Fatalf("default size: %v", err)
			}
		})
	}
}

func TestBuildExt4Errors(t *testing.T) {
	requireTools(t)
	src, _ := tree(t)
	out := t.TempDir()
	dst := filepath.Join(out, "root.img")
	ctx := context.Background()

	if err := BuildExt4(ctx, filepath.Join(src, "nope"), dst, 0, ""); !errdefs.IsNotFound(err) {
		t.Errorf("missing source: %v", err)
	}
	if err := BuildExt4(ctx, filepath.Join(src, "etc/hostname"), dst, 0, ""); !errdefs.IsInvalidArgument(err) {
		t.Errorf("file as source: %v", err)
	}
	if err := BuildExt4(ctx, src, dst, 0, "a-label-longer-than-16"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("long label: %v", err)
	}
	if err := BuildExt4(ctx, src, dst, -1, ""); !errdefs.IsInvalidArgument(err) {
		t.Errorf("negative size: %v", err)
	}

	// mkfs.ext4 missing.
	saved := Mkfs
	t.Cleanup(func() { Mkfs = saved })
	Mkfs = "mkfs.ext4-not-installed"
	err := BuildExt4(ctx, src, dst, 0, "")
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "e2fsprogs") {
		t.Errorf("missing mkfs: %v", err)
	}
	// mkfs.ext4 failing: its error is reported and no file is left.
	Mkfs = "false"
	if err := BuildExt4(ctx, src, dst, 0, ""); err == nil {
		t.Error("a failing mkfs reported success")
	}
	assertNoTemp(t, out, 0)
	// A cancelled context stops the build.
	Mkfs = saved
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := BuildExt4(cctx, src, dst, 0, ""); err == nil {
		t.Error("a cancelled build reported success")
	}
	assertNoTemp(t, out, 0)
}

// assertNoTemp checks that dir holds exactly n entries and no temporary
// file.
func assertNoTemp(t *testing.T, dir string, n int) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
	if len(entries) != n {
		t.Errorf("%s holds %d entries, want %d", dir, len(entries), n)
	}
}

func BenchmarkBuildExt4(b *testing.B) {
	requireTools(b)
	src, _ := tree(b)
	dst := filepath.Join(b.TempDir(), "root.img")
	for b.Loop() {
		if err := BuildExt4(context.Background(), src, dst, 0, "root"); err != nil {
			b.Fatal(err)
		}
	}
}
