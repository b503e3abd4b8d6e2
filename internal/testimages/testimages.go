// Package testimages builds the guest artifacts the tests and the demo boot
// (a Debian cloud kernel as bzImage and vmlinux, a busybox initrd that loads
// the virtio modules, and a busybox root filesystem) from Debian packages,
// caches them by kernel version, and pushes them to an OCI registry as the
// kernel, initrd and root images flintlockd pulls.
package testimages

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/internal/imagebuild"
)

// guestInit is both the initrd's /init and the root image's /sbin/init.
//
//go:embed guest-init.sh
var guestInit []byte

// recipe changes whenever the way artifacts are built changes, so that
// cached builds made by an older recipe are rebuilt.
const recipe = "1"

// BootedMarker is the console line the guest prints once its init runs.
const BootedMarker = "LIQUIDMETAL-GUEST: booted"

// Artifacts are the files of one cached build.
type Artifacts struct {
	// Dir is the cache folder of this build (<cache>/<kernel version>).
	Dir string
	// KernelVersion is the kernel release (uname -r), e.g. 6.1.0-56-cloud-amd64.
	KernelVersion string
	// KernelPackageVersion is the Debian version of the kernel package.
	KernelPackageVersion string
	// Vmlinuz is the compressed kernel (bzImage), as QEMU boots it.
	Vmlinuz string
	// Vmlinux is the uncompressed ELF kernel, as Firecracker boots it.
	Vmlinux string
	// Config is the kernel's build configuration.
	Config string
	// Initrd is the gzip'd newc cpio initramfs.
	Initrd string
	// RootFSDir is the root filesystem tree (busybox, /sbin/init).
	RootFSDir string
	// Modules are the module files the initrd loads, in order, relative to
	// lib/modules/<version>.
	Modules []string
}

// manifest is written last into a build folder: its presence with the
// current recipe marks a complete build.
type manifest struct {
	Recipe               string   `json:"recipe"`
	KernelVersion        string   `json:"kernelVersion"`
	KernelPackageVersion string   `json:"kernelPackageVersion"`
	BusyboxVersion       string   `json:"busyboxVersion"`
	Modules              []string `json:"modules"`
}

func recipeID() string {
	h := sha256.New()
	h.Write([]byte(recipe + "\x00"))
	h.Write(guestInit)
	for _, m := range guestModules {
		fmt.Fprintf(h, "\x00%s %v", m.name, m.optional)
	}
	return recipe + "-" + hex.EncodeToString(h.Sum(nil))[:12]
}

// Build returns the guest artifacts for the current Debian cloud kernel
// (the version linux-image-cloud-amd64 points at), building them under
// cacheDir/<kernel version>/ when they are missing or were made by another
// recipe. A cached build is returned without further work. When apt cannot
// name the current kernel, the newest complete cached build is used.
// Concurrent callers (also in other processes) wait for one build.
func Build(ctx context.Context, cacheDir string) (*Artifacts, error) {
	cacheDir, err := filepath.Abs(cacheDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("guest cache: %w", err)
	}
	kpkg, err := currentKernelPackage(ctx)
	if err != nil {
		if a, cerr := newestCached(cacheDir); cerr == nil {
			slog.WarnContext(ctx, "apt cannot name the current kernel; using the cached build", "error", err, "kernel", a.KernelVersion)
			return a, nil
		}
		return nil, err
	}
	kver := strings.TrimPrefix(kpkg, "linux-image-")
	dir := filepath.Join(cacheDir, kver)
	if a, err := loadCached(dir); err == nil {
		return a, nil
	}

	unlock, err := imagebuild.LockFile(ctx, filepath.Join(cacheDir, kver+".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if a, err := loadCached(dir); err == nil { // built while we waited
		return a, nil
	}
	start := time.Now()
	slog.InfoContext(ctx, "building guest artifacts", "kernel", kver, "dir", dir)
	if err := build(ctx, dir, kpkg, kver); err != nil {
		return nil, fmt.Errorf("build guest artifacts for %s: %w", kver, err)
	}
	slog.InfoContext(ctx, "built guest artifacts", "kernel", kver, "took", time.Since(start).Round(time.Millisecond))
	return loadCached(dir)
}

func artifactsIn(dir string, m *manifest) *Artifacts {
	return &Artifacts{
		Dir:                  dir,
		KernelVersion:        m.KernelVersion,
		KernelPackageVersion: m.KernelPackageVersion,
		Vmlinuz:              filepath.Join(dir, "vmlinuz"),
		Vmlinux:              filepath.Join(dir, "vmlinux"),
		Config:               filepath.Join(dir, "config"),
		Initrd:               filepath.Join(dir, "initrd.img"),
		RootFSDir:            filepath.Join(dir, "rootfs"),
		Modules:              m.Modules,
	}
}

func loadCached(dir string) (*Artifacts, error) {
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if m.Recipe != recipeID() {
		return nil, fmt.Errorf("cached build of recipe %s: %w", m.Recipe, errdefs.ErrFailedPrecondition)
	}
	a := artifactsIn(dir, &m)
	for _, p := range []string{a.Vmlinuz, a.Vmlinux, a.Config, a.Initrd, filepath.Join(a.RootFSDir, "sbin", "init")} {
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
	}
	return a, nil
}

func newestCached(cacheDir string) (*Artifacts, error) {
	ents, err := os.ReadDir(cacheDir)
	if err != nil {
		return nil, err
	}
	var best *Artifacts
	var bestTime time.Time
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		a, err := loadCached(filepath.Join(cacheDir, e.Name()))
		if err != nil {
			continue
		}
		fi, err := os.Stat(filepath.Join(a.Dir, "manifest.json"))
		if err == nil && (best == nil || fi.ModTime().After(bestTime)) {
			best, bestTime = a, fi.ModTime()
		}
	}
	if best == nil {
		return nil, fmt.Errorf("no complete guest build in %s: %w", cacheDir, errdefs.ErrNotFound)
	}
	return best, nil
}

// build makes every artifact in dir. The downloaded packages are kept
// (dir/debs) so that a rebuild with a new recipe needs no network.
func build(ctx context.Context, dir, kpkg, kver string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(dir, "manifest.json"))
	for _, p := range []string{"rootfs", "layers", "x"} {
		if err := os.RemoveAll(filepath.Join(dir, p)); err != nil {
			return err
		}
	}
	debs := filepath.Join(dir, "debs")
	kdeb, err := aptDownload(ctx, debs, kpkg)
	if err != nil {
		return err
	}
	bdeb, err := aptDownload(ctx, debs, "busybox-static")
	if err != nil {
		return err
	}
	kpv, err := debField(ctx, kdeb, "Version")
	if err != nil {
		return err
	}
	bbv, err := debField(ctx, bdeb, "Version")
	if err != nil {
		return err
	}

	// Unpack both packages in a scratch folder removed at the end.
	x := filepath.Join(dir, "x")
	defer os.RemoveAll(x)
	kx, bx := filepath.Join(x, "kernel"), filepath.Join(x, "busybox")
	if err := dpkgExtract(ctx, kdeb, kx); err != nil {
		return err
	}
	if err := dpkgExtract(ctx, bdeb, bx); err != nil {
		return err
	}

	// Kernel: bzImage, config and the vmlinux inside the bzImage.
	vmlinuz, err := os.ReadFile(filepath.Join(kx, "boot", "vmlinuz-"+kver))
	if err != nil {
		return fmt.Errorf("kernel package: %w", err)
	}
	vmlinux, err := ExtractVmlinux(vmlinuz)
	if err != nil {
		return err
	}
	config, err := os.ReadFile(filepath.Join(kx, "boot", "config-"+kver))
	if err != nil {
		return fmt.Errorf("kernel package: %w", err)
	}
	for name, b := range map[string][]byte{"vmlinuz": vmlinuz, "vmlinux": vmlinux, "config": config} {
		if err := writeFileAtomic(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}

	// The busybox applets, as symlinks, for both trees.
	busybox := filepath.Join(bx, "bin", "busybox")
	applets, err := busyboxApplets(ctx, busybox)
	if err != nil {
		return err
	}
	base := func() tree {
		t := tree{}
		for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "run", "root", "mnt"} {
			t.dir(d, 0o755)
		}
		t.dir("tmp", fs.ModeSticky|0o777)
		t.copyOf("bin/busybox", 0o755, busybox)
		for _, a := range applets {
			t.symlink(a, "/bin/busybox")
		}
		t.file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
		t.file("etc/group", 0o644, []byte("root:x:0:\n"))
		t.file("etc/hostname", 0o644, []byte("liquidmetal-guest\n"))
		return t
	}

	// Initrd: busybox, the modules in load order, /init.
	mods, err := loadKernelModules(filepath.Join(kx, "lib", "modules", kver))
	if err != nil {
		return err
	}
	order, err := mods.loadOrder()
	if err != nil {
		return err
	}
	it := base()
	it.charDev("dev/console", 0o600, 5, 1)
	it.file("init", 0o755, guestInit)
	it.file("etc/liquidmetal-initrd", 0o644, []byte(kver+"\n"))
	it.file("etc/liquidmetal/modules", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	for _, rel := range order {
		it.copyOf(filepath.ToSlash(filepath.Join("lib/modules", kver, rel)), 0o644, filepath.Join(mods.dir, rel))
	}
	var cpio bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&cpio, gzip.BestCompression) // no name, zero time: reproducible
	if err := it.writeCPIO(zw); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, "initrd.img"), cpio.Bytes(), 0o644); err != nil {
		return err
	}

	// Root filesystem: busybox and /sbin/init.
	rt := base()
	rt.file("sbin/init", 0o755, guestInit)
	rt.file("etc/liquidmetal-release", 0o644, []byte("liquidmetal test guest, busybox "+bbv+"\n"))
	if err := rt.writeDir(filepath.Join(dir, "rootfs")); err != nil {
		return fmt.Errorf("root filesystem tree: %w", err)
	}

	m := manifest{Recipe: recipeID(), KernelVersion: kver, KernelPackageVersion: kpv, BusyboxVersion: bbv, Modules: order}
	b, _ := json.MarshalIndent(m, "", "  ")
	return writeFileAtomic(filepath.Join(dir, "manifest.json"), append(b, '\n'), 0o644)
}

// currentKernelPackage asks apt which versioned package the cloud kernel
// metapackage points at, e.g. linux-image-6.1.0-56-cloud-amd64.
func currentKernelPackage(ctx context.Context) (string, error) {
	out, err := run(ctx, "", "apt-cache", "show", "--no-all-versions", "linux-image-cloud-amd64")
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(out, "\n") {
		deps, ok := strings.CutPrefix(l, "Depends:")
		if !ok {
			continue
		}
		for _, d := range strings.Split(deps, ",") {
			if f := strings.Fields(d); len(f) > 0 && strings.HasPrefix(f[0], "linux-image-") {
				return f[0], nil
			}
		}
	}
	return "", fmt.Errorf("linux-image-cloud-amd64 depends on no linux-image package: %w", errdefs.ErrNotFound)
}

// aptDownload fetches the package into dir (unless a .deb of it is there)
// and returns the .deb's path.
func aptDownload(ctx context.Context, dir, pkg string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	find := func() string {
		m, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
		if len(m) == 1 {
			return m[0]
		}
		return ""
	}
	if p := find(); p != "" {
		return p, nil
	}
	// As root apt drops to the _apt user unless told otherwise; a private
	// cache folder is not readable by it.
	if _, err := run(ctx, dir, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg); err != nil {
		return "", err
	}
	if p := find(); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("apt-get download %s left no single .deb in %s: %w", pkg, dir, errdefs.ErrNotFound)
}

func debField(ctx context.Context, deb, field string) (string, error) {
	out, err := run(ctx, "", "dpkg-deb", "-f", deb, field)
	return strings.TrimSpace(out), err
}

func dpkgExtract(ctx context.Context, deb, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	_, err := run(ctx, "", "dpkg-deb", "-x", deb, dir)
	return err
}

// busyboxApplets lists the applet paths (relative) a busybox binary
// provides, leaving out the ones our init replaces.
func busyboxApplets(ctx context.Context, busybox string) ([]string, error) {
	out, err := run(ctx, "", busybox, "--list-full")
	if err != nil {
		return nil, err
	}
	var as []string
	for _, a := range strings.Fields(out) {
		a = strings.TrimPrefix(a, "/")
		switch a {
		case "linuxrc", "sbin/init", "bin/busybox":
			continue
		}
		as = append(as, a)
	}
	if len(as) < 50 {
		return nil, fmt.Errorf("busybox lists only %d applets: %w", len(as), errdefs.ErrInvalidArgument)
	}
	return as, nil
}

func run(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

func writeFileAtomic(path string, b []byte, perm fs.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
