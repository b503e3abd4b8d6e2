package images

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
	"github.com/liquidmetal-go/liquidmetal/internal/volumes"
)

// kernelImage pushes an image laid out like flintlock's kernel images:
// boot/vmlinuz and boot/initrd.img, plus a custom-named file and a
// symbolic link.
func kernelImage(t *testing.T, e *env, tag string) (ref string, kernel, initrd []byte) {
	kernel = randomBytes(t, 2<<20)
	initrd = randomBytes(t, 512<<10)
	ref = e.push(t, "kernel:"+tag, []file{
		{path: "boot/vmlinuz-6.1.0", data: kernel},
		{path: "boot/vmlinuz", link: "/boot/vmlinuz-6.1.0"}, // absolute: resolved inside the image
		{path: "boot/initrd.img", data: initrd},
		{path: "custom/kernel.bin", data: kernel[:1000]},
	})
	return ref, kernel, initrd
}

func TestPullAndCopyKernel(t *testing.T) {
	e := newEnv(t, Options{})
	ref, kernel, initrd := kernelImage(t, e, "1")
	ctx, err := e.svc.EnsureLease(e.ctx(t), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	img, err := e.svc.Pull(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if img.Cached || img.Ref != ref || img.ChainID == "" || img.Digest == "" {
		t.Fatalf("unexpected image %+v", img)
	}
	if img.Snapshotter != SnapshotterOverlayFS {
		t.Errorf("snapshotter %q, want overlayfs on this host", img.Snapshotter)
	}
	dir := t.TempDir()

	used, err := e.svc.CopyKernel(ctx, "vm1", img, "", filepath.Join(dir, "kernel"))
	if err != nil {
		t.Fatal(err)
	}
	if used != "boot/vmlinuz" {
		t.Errorf("kernel found at %q, want boot/vmlinuz", used)
	}
	assertFile(t, filepath.Join(dir, "kernel"), kernel)

	if _, err := e.svc.CopyInitrd(ctx, "vm1", img, "", filepath.Join(dir, "initrd")); err != nil {
		t.Fatal(err)
	}
	assertFile(t, filepath.Join(dir, "initrd"), initrd)

	// A custom filename, with a leading slash as users write it.
	if err := e.svc.CopyFile(ctx, "vm1", img, "/custom/kernel.bin", filepath.Join(dir, "custom")); err != nil {
		t.Fatal(err)
	}
	assertFile(t, filepath.Join(dir, "custom"), kernel[:1000])

	// Copying again replaces the file in place.
	if err := e.svc.CopyFile(ctx, "vm1", img, "boot/initrd.img", filepath.Join(dir, "custom")); err != nil {
		t.Fatal(err)
	}
	assertFile(t, filepath.Join(dir, "custom"), initrd)

	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Errorf("VM folder holds %d entries, want kernel, initrd, custom only: %v", len(entries), entries)
	}
	if m := mountsUnder(t, e.svc.opts.TempDir); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
}

func TestKernelDefaultPathOrder(t *testing.T) {
	e := newEnv(t, Options{})
	want := randomBytes(t, 4096)
	// boot/vmlinux comes before vmlinuz in KernelPaths.
	ref := e.push(t, "order:1", []file{
		{path: "vmlinuz", data: randomBytes(t, 4096)},
		{path: "boot/vmlinux", data: want},
	})
	ctx, err := e.svc.EnsureLease(e.ctx(t), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	img, err := e.svc.Pull(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "kernel")
	used, err := e.svc.CopyKernel(ctx, "vm1", img, "", dst)
	if err != nil {
		t.Fatal(err)
	}
	if used != "boot/vmlinux" {
		t.Errorf("used %q, want boot/vmlinux", used)
	}
	assertFile(t, dst, want)

	// No initrd in this image: not found, naming every path tried.
	_, err = e.svc.CopyInitrd(ctx, "vm1", img, "", filepath.Join(t.TempDir(), "initrd"))
	if !errdefs.IsNotFound(err) {
		t.Fatalf("want not found, got %v", err)
	}
	for _, p := range InitrdPaths {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not name %s", err, p)
		}
	}
}

func TestCopyMissingFile(t *testing.T) {
	e := newEnv(t, Options{})
	ref, _, _ := kernelImage(t, e, "1")
	ctx, err := e.svc.EnsureLease(e.ctx(t), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	img, err := e.svc.Pull(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "kernel")
	err = e.svc.CopyFile(ctx, "vm1", img, "boot/missing", dst)
	if !errdefs.IsNotFound(err) {
		t.Fatalf("want not found, got %v", err)
	}
	if !strings.Contains(err.Error(), ref) || !strings.Contains(err.Error(), "boot/missing") {
		t.Errorf("error %q does not name the image and the path", err)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dst exists after a failed copy: %v", err)
	}
	// A folder is not a file.
	err = e.svc.CopyFile(ctx, "vm1", img, "boot", dst)
	if !errdefs.IsInvalidArgument(err) {
		t.Fatalf("copying a folder: want invalid argument, got %v", err)
	}
	// Nothing escapes the image root.
	err = e.svc.CopyFile(ctx, "vm1", img, "../../../../etc/hostname", dst)
	if !errdefs.IsNotFound(err) {
		t.Fatalf("copying outside the image: want not found, got %v", err)
	}
	if m := mountsUnder(t, e.svc.opts.TempDir); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
}

func TestPullMissingImage(t *testing.T) {
	e := newEnv(t, Options{})
	e.push(t, "present:1", []file{{path: "a", data: []byte("a")}})
	ref := e.host + "/absent:1"
	ctx, err := e.svc.EnsureLease(e.ctx(t), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Pull(ctx, ref)
	if !errdefs.IsNotFound(err) {
		t.Fatalf("want not found, got %v", err)
	}
	if !strings.Contains(err.Error(), ref) {
		t.Errorf("error %q does not name %s", err, ref)
	}
	// A known repository with an unknown tag.
	_, err = e.svc.Pull(ctx, e.host+"/present:2")
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), e.host+"/present:2") {
		t.Fatalf("want not found naming the ref, got %v", err)
	}
	if err := e.svc.DeleteLease(e.ctx(t), "vm1"); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, e, "vm1")
}

func TestPullUnreachableRegistry(t *testing.T) {
	e := newEnv(t, Options{})
	// A loopback port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close()
	ref := host + "/kernel:1"
	ctx, err := e.svc.EnsureLease(e.ctx(t), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Pull(ctx, ref)
	if !errdefs.IsUnavailable(err) {
		t.Fatalf("want unavailable, got %v", err)
	}
	if !strings.Contains(err.Error(), ref) {
		t.Errorf("error %q does not name %s", err, ref)
	}
	if err := e.svc.DeleteLease(e.ctx(t), "vm1"); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, e, "vm1")
}

func TestCachedPullMakesNoRegistryRequest(t *testing.T) {
	e := newEnv(t, Options{})
	ref, _, _ := kernelImage(t, e, "1")
	ctx1, err := e.svc.EnsureLease(e.ctx(t), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	first, err := e.svc.Pull(ctx1, ref)
	if err != nil {
		t.Fatal(err)
	}
	if n := e.requests.Load(); n == 0 {
		t.Fatal("the first pull made no request through the proxy")
	}
	before := e.requests.Load()
	ctx2, err := e.svc.EnsureLease(e.ctx(t), "vm2")
	if err != nil {
		t.Fatal(err)
	}
	var best time.Duration
	for i := 0; i < 5; i++ {
		start := time.Now()
		second, err := e.svc.Pull(ctx2, ref)
		d := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		if !second.Cached || second.ChainID != first.ChainID || second.Digest != first.Digest {
			t.Fatalf("second pull %+v, first %+v", second, first)
		}
		if i == 0 || d < best {
			best = d
		}
	}
	if n := e.requests.Load() - before; n != 0 {
		t.Fatalf("cached pulls made %d registry requests", n)
	}
	// Speed is BenchmarkPullCached's to measure; here the fast path is
	// proven by the absence of registry requests.
	t.Logf("cached pull: %v", best)
	// The image is in vm2's lease too.
	res, err := e.svc.Leftovers(e.ctx(t), "vm2")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(res.Resources, func(r leases.Resource) bool { return r.ID == first.Digest.String() }) {
		t.Errorf("vm2's lease does not hold the image: %+v", res.Resources)
	}
}

// TestPullUnpacksWithoutRegistry: an image whose content is all in
// containerd but whose snapshot is gone is unpacked again locally.
func TestPullUnpacksWithoutRegistry(t *testing.T) {
	e := newEnv(t, Options{})
	ref, kernel, _ := kernelImage(t, e, "1")
	ctx, err := e.svc.EnsureLease(e.ctx(t), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	img, err := e.svc.Pull(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.client.SnapshotService(img.Snapshotter).Remove(ctx, img.ChainID.String()); err != nil {
		t.Fatal(err)
	}
	if got := e.snapshotKeys(t); len(got) != 0 {
		t.Fatalf("snapshots after removal: %v", got)
	}
	before := e.requests.Load()
	again, err := e.svc.Pull(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if n := e.requests.Load() - before; n != 0 {
		t.Errorf("re-unpacking made %d registry requests", n)
	}
	if !again.Cached || again.ChainID != img.ChainID {
		t.Errorf("second pull %+v, first %+v", again, img)
	}
	if got := e.snapshotKeys(t); !slices.Equal(got, []string{img.ChainID.String()}) {
		t.Fatalf("snapshots after re-pull: %v", got)
	}
	dst := filepath.Join(t.TempDir(), "kernel")
	if _, err := e.svc.CopyKernel(ctx, "vm1", again, "", dst); err != nil {
		t.Fatal(err)
	}
	assertFile(t, dst, kernel)
}

// TestConcurrentPulls: VMs created at once from one image fetch it once.
func TestConcurrentPulls(t *testing.T) {
	e := newEnv(t, Options{CacheDir: t.TempDir()})
	ref, kernel, _ := kernelImage(t, e, "1")
	const n = 4
	var wg sync.WaitGroup
	results := make([]Image, n)
	errs := make([]error, n)
	dir := t.TempDir()
	for i := range n {
		wg.Go(func() {
			uid := fmt.Sprintf("vm%d", i)
			ctx, err := e.svc.EnsureLease(e.ctx(t), uid)
			if err == nil {
				results[i], err = e.svc.Pull(ctx, ref)
			}
			if err == nil {
				_, err = e.svc.CopyKernel(ctx, uid, results[i], "", filepath.Join(dir, uid))
			}
			errs[i] = err
		})
	}
	wg.Wait()
	fetched := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("vm%d: %v", i, errs[i])
		}
		if !results[i].Cached {
			fetched++
		}
		assertFile(t, filepath.Join(dir, fmt.Sprintf("vm%d", i)), kernel)
	}
	if fetched != 1 {
		t.Errorf("%d of %d concurrent pulls went to the registry, want 1", fetched, n)
	}
	assertNoMountsLeft(t, e)
}

// TestLeasesHoldAndRelease: an image pulled by two VMs outlives its removal
// from the image store until both leases are gone; then nothing is left.
func TestLeasesHoldAndRelease(t *testing.T) {
	e := newEnv(t, Options{})
	ref := e.push(t, "rootfs:1",
		[]file{{path: "etc/hostname", data: []byte("base\n")}, {path: "bin/sh", data: randomBytes(t, 100<<10), mode: 0o755}},
		[]file{{path: "etc/hostname", data: []byte("top\n")}, {path: "etc/motd", data: []byte("hi\n")}},
	)
	ctxA, err := e.svc.EnsureLease(e.ctx(t), "vmA")
	if err != nil {
		t.Fatal(err)
	}
	img, err := e.svc.Pull(ctxA, ref)
	if err != nil {
		t.Fatal(err)
	}
	ctxB, err := e.svc.EnsureLease(e.ctx(t), "vmB")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Pull(ctxB, ref); err != nil {
		t.Fatal(err)
	}
	blobs := e.contentDigests(t)
	snaps := e.snapshotKeys(t)
	// manifest + config + 2 layers; 2 layer snapshots.
	if len(blobs) != 4 || len(snaps) != 2 {
		t.Fatalf("after pull: %d blobs %v, %d snapshots %v", len(blobs), blobs, len(snaps), snaps)
	}
	if !slices.Contains(snaps, img.ChainID.String()) {
		t.Fatalf("snapshot %s missing from %v", img.ChainID, snaps)
	}
	if err := e.svc.RemoveImage(e.ctx(t), ref); err != nil {
		t.Fatal(err)
	}
	if got := e.contentDigests(t); !slices.Equal(got, blobs) {
		t.Fatalf("removing the image took content held by leases: %v -> %v", blobs, got)
	}
	if got := e.snapshotKeys(t); !slices.Equal(got, snaps) {
		t.Fatalf("removing the image took snapshots held by leases: %v -> %v", snaps, got)
	}
	// A view left by a crash is reused, and removed, by the next mount
	// (the image still mounts: the leases hold it).
	sn := e.client.SnapshotService(img.Snapshotter)
	if _, err := sn.View(ctxA, viewKey("vmA", img), img.ChainID.String()); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.WithMounted(ctxA, "vmA", img, func(root string) error {
		_, err := os.Stat(filepath.Join(root, "etc/motd"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if left, err := e.svc.Leftovers(ctxA, "vmA"); err != nil || len(left.Views) != 0 {
		t.Fatalf("views after mount: %v %v", left.Views, err)
	}
	// One left by a crash goes with the lease.
	if _, err := sn.View(ctxA, viewKey("vmA", img), img.ChainID.String()); err != nil {
		t.Fatal(err)
	}
	if left, err := e.svc.Leftovers(ctxA, "vmA"); err != nil || len(left.Views) != 1 {
		t.Fatalf("views: %v %v", left.Views, err)
	}

	if err := e.svc.DeleteLease(e.ctx(t), "vmA"); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.DeleteLease(e.ctx(t), "vmA"); err != nil {
		t.Fatalf("deleting a missing lease: %v", err)
	}
	if ok, err := e.svc.LeaseExists(e.ctx(t), "vmA"); err != nil || ok {
		t.Fatalf("lease vmA exists=%v err=%v after delete", ok, err)
	}
	if got := e.contentDigests(t); !slices.Equal(got, blobs) {
		t.Fatalf("deleting vmA's lease took content vmB holds: %v -> %v", blobs, got)
	}
	if got := e.snapshotKeys(t); !slices.Equal(got, snaps) {
		t.Fatalf("deleting vmA's lease took snapshots vmB holds: %v -> %v", snaps, got)
	}
	if err := e.svc.DeleteLease(e.ctx(t), "vmB"); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, e, "vmA")
	assertNothingLeft(t, e, "vmB")
}

func TestWithMountedLeavesNoMounts(t *testing.T) {
	e := newEnv(t, Options{})
	ref := e.push(t, "rootfs:1",
		[]file{{path: "etc/hostname", data: []byte("base\n")}},
		[]file{{path: "etc/hostname", data: []byte("top\n")}},
	)
	ctx, err := e.svc.EnsureLease(e.ctx(t), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	img, err := e.svc.Pull(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	var seen string
	err = e.svc.WithMounted(ctx, "vm1", img, func(root string) error {
		seen = root
		if m := mountsUnder(t, root); len(m) == 0 {
			t.Errorf("%s is not a mount point while in use", root)
		}
		assertFile(t, filepath.Join(root, "etc/hostname"), []byte("top\n"))
		if err := os.WriteFile(filepath.Join(root, "new"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
			t.Errorf("writing into the view: want EROFS, got %v", err)
		}
		views, err := e.svc.Leftovers(ctx, "vm1")
		if err != nil || len(views.Views) != 1 {
			t.Errorf("views while mounted: %v %v", views.Views, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	assertUnmounted(t, e, seen)

	// fn's error is returned, and nothing stays mounted.
	boom := errors.New("boom")
	err = e.svc.WithMounted(ctx, "vm1", img, func(root string) error { seen = root; return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("want fn's error, got %v", err)
	}
	assertUnmounted(t, e, seen)

	// A panic in fn propagates, and nothing stays mounted.
	func() {
		defer func() {
			if r := recover(); r != "kaboom" {
				t.Errorf("want the panic to propagate, got %v", r)
			}
		}()
		_ = e.svc.WithMounted(ctx, "vm1", img, func(root string) error { seen = root; panic("kaboom") })
	}()
	assertUnmounted(t, e, seen)

	// A cancelled context still cleans up.
	cctx, cancel := context.WithCancel(ctx)
	err = e.svc.WithMounted(cctx, "vm1", img, func(root string) error { seen = root; cancel(); return nil })
	if err != nil {
		t.Fatal(err)
	}
	assertUnmounted(t, e, seen)

	// An image that was never pulled.
	if err := e.svc.WithMounted(ctx, "vm1", Image{Ref: ref}, func(string) error { return nil }); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("unpulled image: want invalid argument, got %v", err)
	}
}

func TestBuildExt4FromImage(t *testing.T) {
	if _, err := exec.LookPath("debugfs"); err != nil {
		t.Skipf("SKIPPED: debugfs (e2fsprogs) is missing: %v", err)
	}
	e := newEnv(t, Options{})
	sh := randomBytes(t, 300<<10)
	ref := e.push(t, "rootfs:1",
		[]file{{path: "etc/hostname", data: []byte("base\n")}, {path: "bin/sh", data: sh, mode: 0o755}},
		[]file{{path: "etc/hostname", data: []byte("top\n")}, {path: "bin/ash", link: "sh"}},
	)
	ctx, err := e.svc.EnsureLease(e.ctx(t), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	img, err := e.svc.Pull(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "root.img")
	err = e.svc.WithMounted(ctx, "vm1", img, func(root string) error {
		return volumes.BuildExt4(ctx, root, dst, 0, "root")
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := debugfs(t, dst, "cat /etc/hostname"); got != "top\n" {
		t.Errorf("/etc/hostname in the volume: %q", got)
	}
	if got := debugfs(t, dst, "cat /bin/sh"); got != string(sh) {
		t.Errorf("/bin/sh in the volume differs (%d bytes, want %d)", len(got), len(sh))
	}
	if got := debugfs(t, dst, "stat /bin/ash"); !strings.Contains(got, `Fast link dest: "sh"`) {
		t.Errorf("/bin/ash is not a link to sh: %s", got)
	}
	if got := debugfs(t, dst, "stat /bin/sh"); !strings.Contains(got, "Mode:  0755") {
		t.Errorf("/bin/sh mode: %s", got)
	}
	assertNoMountsLeft(t, e)
}

func TestSnapshotterFallsBackToNative(t *testing.T) {
	e := newEnv(t, Options{}, testenv.WithDisabledPlugins("io.containerd.snapshotter.v1.overlayfs"))
	ref, kernel, _ := kernelImage(t, e, "1")
	ctx, err := e.svc.EnsureLease(e.ctx(t), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	img, err := e.svc.Pull(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if img.Snapshotter != SnapshotterNative {
		t.Fatalf("snapshotter %q, want native", img.Snapshotter)
	}
	dst := filepath.Join(t.TempDir(), "kernel")
	if _, err := e.svc.CopyKernel(ctx, "vm1", img, "", dst); err != nil {
		t.Fatal(err)
	}
	assertFile(t, dst, kernel)
	if err := e.svc.DeleteLease(e.ctx(t), "vm1"); err != nil {
		t.Fatal(err)
	}

	// Asking for overlayfs by name on this daemon fails clearly.
	strict := New(e.client, Options{Snapshotter: SnapshotterOverlayFS})
	if _, err := strict.Pull(e.ctx(t), ref); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "overlayfs") {
		t.Fatalf("want failed precondition naming overlayfs, got %v", err)
	}
}

// TestFileCache: files copied out of an image are cached per image and
// hard-linked into VM folders; the cache answers without mounting (so
// without even creating a lease), remembers missing paths, and is pruned
// once the image is gone.
func TestFileCache(t *testing.T) {
	cacheDir := t.TempDir()
	e := newEnv(t, Options{CacheDir: cacheDir})
	ref, kernel, initrd := kernelImage(t, e, "1")
	vmDirs := t.TempDir()
	ctx, err := e.svc.EnsureLease(e.ctx(t), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	img, err := e.svc.Pull(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	k1 := filepath.Join(vmDirs, "k1")
	if _, err := e.svc.CopyKernel(ctx, "vm1", img, "", k1); err != nil {
		t.Fatal(err)
	}
	assertFile(t, k1, kernel)
	if _, err := e.svc.CopyFirst(ctx, "vm1", img, []string{"vmlinux", "boot/initrd.img"}, filepath.Join(vmDirs, "i1")); err != nil {
		t.Fatal(err)
	}

	// vm2 needs no mount: its lease is never even created.
	k2 := filepath.Join(vmDirs, "k2")
	used, err := e.svc.CopyKernel(e.ctx(t), "vm2", img, "", k2)
	if err != nil || used != "boot/vmlinuz" {
		t.Fatalf("cached copy: %q %v", used, err)
	}
	assertFile(t, k2, kernel)
	fi1, _ := os.Stat(k1)
	fi2, _ := os.Stat(k2)
	if !os.SameFile(fi1, fi2) {
		t.Error("cached kernel copies are not hard links of one file")
	}
	if _, err := e.svc.CopyFirst(e.ctx(t), "vm2", img, []string{"vmlinux", "boot/initrd.img"}, filepath.Join(vmDirs, "i2")); err != nil {
		t.Fatal(err)
	}
	assertFile(t, filepath.Join(vmDirs, "i2"), initrd)
	if err := e.svc.CopyFile(e.ctx(t), "vm2", img, "vmlinux", filepath.Join(vmDirs, "x")); !errdefs.IsNotFound(err) {
		t.Fatalf("cached absent file: want not found, got %v", err)
	}
	if ok, err := e.svc.LeaseExists(e.ctx(t), "vm2"); err != nil || ok {
		t.Fatalf("vm2 lease exists=%v (err %v): the cache did not answer", ok, err)
	}

	// Pruning keeps the cache while the image is there...
	if n, err := e.svc.PruneCache(e.ctx(t)); err != nil || n != 0 {
		t.Fatalf("prune with the image present: removed %d, err %v", n, err)
	}
	// ...and empties it once the image is gone.
	if err := e.svc.RemoveImage(e.ctx(t), ref); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.DeleteLease(e.ctx(t), "vm1"); err != nil {
		t.Fatal(err)
	}
	if n, err := e.svc.PruneCache(e.ctx(t)); err != nil || n != 1 {
		t.Fatalf("prune after removal: removed %d, err %v", n, err)
	}
	if entries, _ := os.ReadDir(cacheDir); len(entries) != 0 {
		t.Fatalf("cache not empty after prune: %v", entries)
	}
	// VM files survive the cache going.
	assertFile(t, k2, kernel)
}

// TestCachedCreateIsFast: with the images and their files cached, what a
// VM create does with images (pull kernel image, copy kernel and initrd)
// takes well under 50 ms.
func TestCachedCreateIsFast(t *testing.T) {
	e := newEnv(t, Options{CacheDir: t.TempDir()})
	ref, kernel, _ := kernelImage(t, e, "1")
	warm, err := e.svc.EnsureLease(e.ctx(t), "warm")
	if err != nil {
		t.Fatal(err)
	}
	img, err := e.svc.Pull(warm, ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.CopyKernel(warm, "warm", img, "", filepath.Join(t.TempDir(), "k")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.CopyInitrd(warm, "warm", img, "", filepath.Join(t.TempDir(), "i")); err != nil {
		t.Fatal(err)
	}
	var best time.Duration
	for i := 0; i < 5; i++ {
		uid := fmt.Sprintf("vm%d", i)
		dir := t.TempDir()
		start := time.Now()
		ctx, err := e.svc.EnsureLease(e.ctx(t), uid)
		if err != nil {
			t.Fatal(err)
		}
		img, err := e.svc.Pull(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.CopyKernel(ctx, uid, img, "", filepath.Join(dir, "kernel")); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.CopyInitrd(ctx, uid, img, "", filepath.Join(dir, "initrd")); err != nil {
			t.Fatal(err)
		}
		d := time.Since(start)
		if i == 0 || d < best {
			best = d
		}
		assertFile(t, filepath.Join(dir, "kernel"), kernel)
	}
	t.Logf("cached create (lease, pull, kernel, initrd): %v", best)
}

func TestPlainHTTPHosts(t *testing.T) {
	s := New(nil, Options{PlainHTTP: []string{"registry.internal:5000"}})
	for host, want := range map[string]bool{
		"registry.internal:5000": true,
		"registry.internal":      false,
		"127.0.0.1:5000":         true,
		"localhost:5000":         true,
		"[::1]:5000":             true,
		"ghcr.io":                false,
		"docker.io":              false,
	} {
		got, err := s.plainHTTP(host)
		if err != nil || got != want {
			t.Errorf("plainHTTP(%s) = %v, %v; want %v", host, got, err, want)
		}
	}
}

func TestInvalidArguments(t *testing.T) {
	e := newEnv(t, Options{})
	if _, err := e.svc.EnsureLease(e.ctx(t), ""); !errdefs.IsInvalidArgument(err) {
		t.Errorf("empty uid: %v", err)
	}
	if _, err := e.svc.EnsureLease(e.ctx(t), "a/b"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("uid with a slash: %v", err)
	}
	if _, err := e.svc.Pull(e.ctx(t), "example/UPPER:1"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("bad reference: %v", err)
	}
	if err := e.svc.CopyFile(e.ctx(t), "vm1", Image{ChainID: "sha256:00"}, "", "x"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("empty path: %v", err)
	}
	if got, err := NormalizeRef("alpine"); err != nil || got != "docker.io/library/alpine:latest" {
		t.Errorf("NormalizeRef(alpine) = %q, %v", got, err)
	}
}

func BenchmarkPullCached(b *testing.B) {
	e := newEnv(b, Options{})
	ref := e.push(b, "bench:1", []file{{path: "boot/vmlinuz", data: randomBytes(b, 1<<20)}})
	ctx, err := e.svc.EnsureLease(e.ctx(b), "vm1")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := e.svc.Pull(ctx, ref); err != nil {
		b.Fatal(err)
	}
	before := e.requests.Load()
	b.ResetTimer()
	for b.Loop() {
		img, err := e.svc.Pull(ctx, ref)
		if err != nil || !img.Cached {
			b.Fatalf("%+v %v", img, err)
		}
	}
	b.StopTimer()
	if n := e.requests.Load() - before; n != 0 {
		b.Fatalf("cached pulls made %d registry requests", n)
	}
}

func BenchmarkCopyKernelCached(b *testing.B) {
	e := newEnv(b, Options{CacheDir: b.TempDir()})
	ref := e.push(b, "bench:1", []file{{path: "boot/vmlinuz", data: randomBytes(b, 8<<20)}})
	ctx, err := e.svc.EnsureLease(e.ctx(b), "vm1")
	if err != nil {
		b.Fatal(err)
	}
	img, err := e.svc.Pull(ctx, ref)
	if err != nil {
		b.Fatal(err)
	}
	dst := filepath.Join(b.TempDir(), "kernel")
	for b.Loop() {
		if _, err := e.svc.CopyKernel(ctx, "vm1", img, "", dst); err != nil {
			b.Fatal(err)
		}
	}
}

func assertFile(t testing.TB, p string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes differ from the %d expected", p, len(got), len(want))
	}
}

func assertUnmounted(t *testing.T, e *env, root string) {
	t.Helper()
	if root == "" {
		t.Fatal("fn was not called")
	}
	if m := mountsUnder(t, root); len(m) > 0 {
		t.Fatalf("still mounted: %v", m)
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mount point %s left behind: %v", root, err)
	}
	left, err := e.svc.Leftovers(e.ctx(t), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if len(left.Views) > 0 {
		t.Errorf("views left: %v", left.Views)
	}
	assertNoMountsLeft(t, e)
}

func assertNoMountsLeft(t *testing.T, e *env) {
	t.Helper()
	if m := mountsUnder(t, e.svc.opts.TempDir); len(m) > 0 {
		t.Errorf("mounts left under the service's temp folder: %v", m)
	}
	if m, err := e.ctd.Mounts(); err != nil || len(m) > 0 {
		t.Errorf("mounts left under containerd: %v %v", m, err)
	}
}

// assertNothingLeft checks that containerd holds nothing of uid, and that
// the namespace has no content, ingests or snapshots at all (tests that
// call it keep no image in the store).
func assertNothingLeft(t *testing.T, e *env, uid string) {
	t.Helper()
	left, err := e.svc.Leftovers(e.ctx(t), uid)
	if err != nil {
		t.Fatal(err)
	}
	if !left.Empty() {
		t.Errorf("left for %s: %+v", uid, left)
	}
	if c := e.contentDigests(t); len(c) > 0 {
		t.Errorf("content left: %v", c)
	}
	if s := e.snapshotKeys(t); len(s) > 0 {
		t.Errorf("snapshots left: %v", s)
	}
	if i := e.ingests(t); len(i) > 0 {
		t.Errorf("ingests left: %v", i)
	}
}

func debugfs(t *testing.T, img, request string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", request, img).Output()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v", request, err)
	}
	return string(out)
}
