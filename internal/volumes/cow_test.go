package volumes

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// debugfsCat returns a file's content in an ext4 image.
func debugfsCat(t testing.TB, img, path string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+path, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v: %s", path, err, out)
	}
	return string(out)
}

// debugfsWrite writes content to path in an ext4 image (raw file).
func debugfsWrite(t testing.TB, img, path, content string) {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("debugfs", "-w", "-R", "write "+src+" "+path, img).CombinedOutput(); err != nil {
		t.Fatalf("debugfs write: %v: %s", err, out)
	}
}

// treeBuild builds the base from a small tree holding /hello.
func treeBuild(t testing.TB, builds *atomic.Int32) BuildFunc {
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "hello"), []byte("base"), 0o644); err != nil {
		t.Fatal(err)
	}
	return func(ctx context.Context, dst string) error {
		if builds != nil {
			builds.Add(1)
		}
		return BuildExt4(ctx, src, dst, 0, "root")
	}
}

func newProv(t testing.TB, dir string, m Method) *Provisioner {
	t.Helper()
	p, err := NewProvisioner(ProvisionerOptions{Dir: filepath.Join(dir, "volumes"), Method: m})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func nlink(t testing.TB, p string) uint64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(fi.Sys().(*syscall.Stat_t).Nlink)
}

// TestMethodsIsolateWrites: for every method that runs here, two volumes
// of one base are independent of each other and of the base, the base is
// built once, and a qcow2 overlay is read by qemu-img as backed by it.
func TestMethodsIsolateWrites(t *testing.T) {
	requireTools(t)
	dir := t.TempDir()
	ok, err := ProbeReflink(dir)
	if err != nil {
		t.Fatal(err)
	}
	methods := []Method{MethodQcow2, MethodCopy}
	if ok {
		methods = append(methods, MethodReflink)
	} else {
		// The reflink path runs on an xfs filesystem of its own below.
		t.Logf("%s has no reflinks; reflink is covered by TestReflinkOnXFS", dir)
	}
	for _, m := range methods {
		t.Run(string(m), func(t *testing.T) {
			d := t.TempDir()
			p := newProv(t, d, m)
			var builds atomic.Int32
			build := treeBuild(t, &builds)
			key := BaseKey{Digest: "sha256:0123abcd"}
			vms := filepath.Join(d, "vm")
			if err := os.MkdirAll(vms, 0o755); err != nil {
				t.Fatal(err)
			}
			var vols [2]Volume
			var wg sync.WaitGroup
			errs := make([]error, 2)
			for i := range 2 {
				wg.Go(func() {
					vols[i], errs[i] = p.Volume(context.Background(), key, build, filepath.Join(vms, []string{"a", "b"}[i]+".img"), VolumeOptions{})
				})
			}
			wg.Wait()
			for _, e := range errs {
				if e != nil {
					t.Fatal(e)
				}
			}
			if n := builds.Load(); n != 1 {
				t.Fatalf("base built %d times, want once", n)
			}
			if vols[0].Method != m {
				t.Fatalf("method %s, want %s", vols[0].Method, m)
			}
			if m == MethodQcow2 {
				if f, _ := DetectFormat(vols[0].Path); f != FormatQcow2 {
					t.Fatalf("format %s", f)
				}
				out, err := exec.Command(QemuImg, "info", "--output=json", vols[0].Path).CombinedOutput()
				if err != nil || !strings.Contains(string(out), `"backing-filename": "a.base.img"`) {
					t.Fatalf("qemu-img info: %v %s", err, out)
				}
				if nlink(t, vols[0].Base) != 3 {
					t.Fatalf("base links %d, want 3 (itself and two overlays)", nlink(t, vols[0].Base))
				}
				// Write into one overlay through qemu-io, then read both.
				if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4096", vols[0].Path).CombinedOutput(); err != nil {
					t.Fatalf("qemu-io: %v %s", err, out)
				}
				a := qcowRead(t, vols[0].Path)
				b := qcowRead(t, vols[1].Path)
				base := make([]byte, 4096)
				f, _ := os.Open(vols[0].Base)
				f.ReadAt(base, 0)
				f.Close()
				if !bytes.Equal(a, bytes.Repeat([]byte{0x5a}, 4096)) || bytes.Equal(b, a) || !bytes.Equal(b, base) {
					t.Fatal("a write to one overlay is visible in the other or in the base")
				}
				return
			}
			debugfsWrite(t, vols[0].Path, "/mine", "vm a")
			if got := debugfsCat(t, vols[0].Path, "/hello"); got != "base" {
				t.Fatalf("volume a /hello = %q", got)
			}
			for _, other := range []string{vols[1].Path, vols[0].Base} {
				if out, _ := exec.Command("debugfs", "-R", "stat /mine", other).CombinedOutput(); !strings.Contains(string(out), "not found") {
					t.Fatalf("a write to volume a shows in %s: %s", other, out)
				}
			}
		})
	}
}

func qcowRead(t testing.TB, p string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "raw")
	if o, err := exec.Command(QemuImg, "convert", "-f", "qcow2", "-O", "raw", p, out).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v %s", err, o)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b[:4096]
}

// TestReflinkOnXFS: on an xfs filesystem the probe picks reflink and a
// clone shares the base's blocks (the filesystem's used space barely
// grows) while writes stay private.
func TestReflinkOnXFS(t *testing.T) {
	requireTools(t)
	if _, err := exec.LookPath("mkfs.xfs"); err != nil {
		t.Skipf("SKIPPED: mkfs.xfs (xfsprogs) is missing: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: mounting an xfs image needs root")
	}
	img := filepath.Join(t.TempDir(), "xfs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 512<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", "-m", "reflink=1", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v %s", err, out)
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v %s", err, out)
		}
	})
	p, err := NewProvisioner(ProvisionerOptions{Dir: filepath.Join(mnt, "volumes")})
	if err != nil {
		t.Fatal(err)
	}
	if p.Method() != MethodReflink {
		t.Fatalf("method on xfs: %s", p.Method())
	}
	// A base with 64 MiB of data.
	src := t.TempDir()
	data := bytes.Repeat([]byte("0123456789abcdef"), 4<<20)
	if err := os.WriteFile(filepath.Join(src, "data"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "hello"), []byte("base"), 0o644); err != nil {
		t.Fatal(err)
	}
	build := func(ctx context.Context, dst string) error { return BuildExt4(ctx, src, dst, 0, "root") }
	key := BaseKey{Digest: "sha256:feed"}
	if _, err := p.Volume(context.Background(), key, build, filepath.Join(mnt, "a.img"), VolumeOptions{}); err != nil {
		t.Fatal(err)
	}
	before := usedBytes(t, mnt)
	start := time.Now()
	v, err := p.Volume(context.Background(), key, build, filepath.Join(mnt, "b.img"), VolumeOptions{})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if v.Method != MethodReflink || v.BaseBuilt {
		t.Fatalf("second volume: %+v", v)
	}
	if grown := usedBytes(t, mnt) - before; grown > 8<<20 {
		t.Fatalf("a reflink clone used %d bytes of new space", grown)
	}
	t.Logf("reflink clone of a 64 MiB base: %v", took)
	debugfsWrite(t, filepath.Join(mnt, "a.img"), "/hello", "changed")
	if got := debugfsCat(t, filepath.Join(mnt, "b.img"), "/hello"); got != "base" {
		t.Fatalf("b sees %q", got)
	}
	if got := debugfsCat(t, v.Base, "/hello"); got != "base" {
		t.Fatalf("base sees %q", got)
	}
}

func usedBytes(t testing.TB, dir string) int64 {
	t.Helper()
	if err := exec.Command("sync").Run(); err != nil {
		t.Fatal(err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

// TestSizedBaseAndTooSmall: a size gives a base of that size whose
// filesystem fills it; a size below the content is InvalidArgument and
// leaves no file.
func TestSizedBaseAndTooSmall(t *testing.T) {
	requireTools(t)
	d := t.TempDir()
	p := newProv(t, d, MethodCopy)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "big"), bytes.Repeat([]byte{1}, 20<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	build := func(size int) BuildFunc {
		return func(ctx context.Context, dst string) error { return BuildExt4(ctx, src, dst, size, "root") }
	}
	v, err := p.Volume(context.Background(), BaseKey{Digest: "sha256:aa", SizeMB: 200}, build(200), filepath.Join(d, "a.img"), VolumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(v.Path)
	if fi.Size() != 200<<20 {
		t.Fatalf("size %d", fi.Size())
	}
	out, err := exec.Command("dumpe2fs", "-h", v.Path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Block count:              51200") {
		t.Fatalf("filesystem does not fill 200 MiB: %v %s", err, out)
	}
	_, err = p.Volume(context.Background(), BaseKey{Digest: "sha256:aa", SizeMB: 5}, build(5), filepath.Join(d, "b.img"), VolumeOptions{})
	if !errdefs.IsInvalidArgument(err) {
		t.Fatalf("5 MiB for 20 MiB of content: %v", err)
	}
	if _, err := os.Stat(filepath.Join(d, "b.img")); !os.IsNotExist(err) {
		t.Fatalf("a failed volume left a file: %v", err)
	}
}

// TestReadOnlySharesBaseAndGC: a read-only volume is the base itself (a
// hard link); GC keeps a linked base, and removes an unlinked one only
// after the grace period, leaving nothing.
func TestReadOnlySharesBaseAndGC(t *testing.T) {
	requireTools(t)
	d := t.TempDir()
	p := newProv(t, d, MethodQcow2)
	build := treeBuild(t, nil)
	ro, err := p.Volume(context.Background(), BaseKey{Digest: "sha256:bb"}, build, filepath.Join(d, "ro.img"), VolumeOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	a, b := statOf(t, ro.Path), statOf(t, ro.Base)
	if a.Ino != b.Ino {
		t.Fatal("a read-only volume is not the base image")
	}
	rw, err := p.Volume(context.Background(), BaseKey{Digest: "sha256:cc"}, build, filepath.Join(d, "rw.img"), VolumeOptions{RawOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if rw.Method != MethodCopy || rw.Format != FormatRaw {
		t.Fatalf("raw-only on a qcow2 host: %+v", rw)
	}
	// Within grace nothing goes.
	if removed, err := p.GC(time.Hour); err != nil || len(removed) != 0 {
		t.Fatalf("gc within grace removed %v (%v)", removed, err)
	}
	// Past grace the copied volume's base goes; the shared one stays.
	removed, err := p.GC(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || !strings.HasPrefix(removed[0], "cc-") {
		t.Fatalf("gc removed %v, want the cc base only", removed)
	}
	if _, err := os.Stat(ro.Base); err != nil {
		t.Fatalf("gc removed a base in use: %v", err)
	}
	if got := debugfsCat(t, rw.Path, "/hello"); got != "base" {
		t.Fatalf("copied volume after its base went: %q", got)
	}
	if err := RemoveVolume(ro.Path); err != nil {
		t.Fatal(err)
	}
	if _, err := p.GC(0); err != nil {
		t.Fatal(err)
	}
	left, _ := os.ReadDir(filepath.Join(d, "volumes", "base"))
	if len(left) != 0 {
		t.Fatalf("files left after gc: %v", left)
	}
}

func statOf(t testing.TB, p string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t)
}

// TestMethodMetric: the gauge names the chosen method.
func TestMethodMetric(t *testing.T) {
	p := newProv(t, t.TempDir(), MethodCopy)
	reg := prometheus.NewRegistry()
	if err := p.Register(reg); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP flintlockd_volume_method How VM volumes are made from base images on this host (1 = in use).
# TYPE flintlockd_volume_method gauge
flintlockd_volume_method{method="copy"} 1
flintlockd_volume_method{method="devmapper"} 0
flintlockd_volume_method{method="qcow2"} 0
flintlockd_volume_method{method="reflink"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// TestThinPoolCommands: device-mapper cannot run here; the command
// sequences and tables are checked instead.
func TestThinPoolCommands(t *testing.T) {
	tp := &ThinPool{Name: "pool0"}
	base := "/state/volumes/base/abc-default.img"
	origin := BaseDeviceName(base)
	if origin != "flintlock-base-abc-default" {
		t.Fatalf("base device %q", origin)
	}
	oid, sid := DeviceID(origin), DeviceID("vm1-root")
	if oid == sid || oid > 0xffffff || DeviceID(origin) != oid {
		t.Fatalf("device ids %d %d", oid, sid)
	}
	got := tp.BaseCommands(base, 100<<20+1)
	want := [][]string{
		{"dmsetup", "message", "/dev/mapper/pool0", "0", "create_thin " + itoa(oid)},
		{"dmsetup", "create", origin, "--table", "0 204801 thin /dev/mapper/pool0 " + itoa(oid)},
		{"dd", "if=" + base, "of=/dev/mapper/" + origin, "bs=1M", "conv=sparse,fsync", "status=none"},
	}
	assertCmds(t, got, want)
	got = tp.SnapshotCommands(base, "vm1-root", 200<<20)
	want = [][]string{
		{"dmsetup", "suspend", origin},
		{"dmsetup", "message", "/dev/mapper/pool0", "0", "create_snap " + itoa(sid) + " " + itoa(oid)},
		{"dmsetup", "resume", origin},
		{"dmsetup", "create", "vm1-root", "--table", "0 409600 thin /dev/mapper/pool0 " + itoa(sid)},
	}
	assertCmds(t, got, want)
	assertCmds(t, tp.RemoveCommands("vm1-root"), [][]string{
		{"dmsetup", "remove", "--retry", "vm1-root"},
		{"dmsetup", "message", "/dev/mapper/pool0", "0", "delete " + itoa(sid)},
	})
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func assertCmds(t *testing.T, got, want [][]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for i := range got {
		if strings.Join(got[i], "\x00") != strings.Join(want[i], "\x00") {
			t.Errorf("command %d: got %q, want %q", i, got[i], want[i])
		}
	}
}
