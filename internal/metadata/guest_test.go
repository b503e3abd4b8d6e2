package metadata

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The cidata disk is read back by Linux's own iso9660 driver (isofs) in a
// QEMU guest: the host kernel here has neither iso9660 nor vfat, and the
// guest kernel is what cloud-init relies on anyway.

// guestKernelPackage is the Debian meta package whose kernel boots the
// reader guest (26 MB; ext4 and the rest built in, virtio and isofs as
// modules).
const guestKernelPackage = "linux-image-cloud-amd64"

// guestModules are loaded in this order by the guest's init.
var guestModules = []string{
	"drivers/virtio/virtio_ring.ko",
	"drivers/virtio/virtio.ko",
	"drivers/virtio/virtio_mmio.ko",
	"drivers/block/virtio_blk.ko",
	"drivers/cdrom/cdrom.ko",
	"fs/isofs/isofs.ko",
}

// guestKernel returns the folder holding vmlinuz and the modules, cached in
// <repo>/bin/cache/guest-kernel/<package>/ (fetched with apt-get download
// once, then reused).
func guestKernel(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"apt-cache", "apt-get", "dpkg", "qemu-system-x86_64", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIPPED: %s is not installed (needed to read the image back in a Linux guest): %v", tool, err)
		}
	}
	out, err := exec.Command("apt-cache", "depends", guestKernelPackage).Output()
	if err != nil {
		t.Fatalf("apt-cache depends %s: %v", guestKernelPackage, err)
	}
	m := regexp.MustCompile(`Depends: (linux-image-[0-9][^\s]*-amd64)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no versioned kernel package in apt-cache depends %s:\n%s", guestKernelPackage, out)
	}
	pkg := string(m[1])
	cache := filepath.Join(repoRoot(t), "bin", "cache", "guest-kernel", pkg)
	if _, err := os.Stat(filepath.Join(cache, "vmlinuz")); err == nil {
		return cache
	}

	work := t.TempDir()
	dl := exec.Command("apt-get", "download", "-q", pkg)
	dl.Dir = work
	if out, err := dl.CombinedOutput(); err != nil {
		t.Fatalf("apt-get download %s: %v\n%s", pkg, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(work, pkg+"_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("apt-get download %s gave %v", pkg, debs)
	}
	root := filepath.Join(work, "x")
	if out, err := exec.Command("dpkg", "-x", debs[0], root).CombinedOutput(); err != nil {
		t.Fatalf("dpkg -x: %v\n%s", err, out)
	}
	stage := filepath.Join(work, "stage")
	if err := os.Mkdir(stage, 0o755); err != nil {
		t.Fatal(err)
	}
	kernels, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	mods, _ := filepath.Glob(filepath.Join(root, "lib", "modules", "*", "kernel"))
	if len(kernels) != 1 || len(mods) != 1 {
		t.Fatalf("package %s: kernels %v, module trees %v", pkg, kernels, mods)
	}
	copyFile(t, kernels[0], filepath.Join(stage, "vmlinuz"))
	for _, mod := range guestModules {
		copyFile(t, filepath.Join(mods[0], mod), filepath.Join(stage, filepath.Base(mod)))
	}
	if err := os.MkdirAll(filepath.Dir(cache), 0o755); err != nil {
		t.Fatal(err)
	}
	// Another test process may have installed it meanwhile: either copy is
	// complete, so a failed rename over a non-empty folder is fine.
	if err := os.Rename(stage, cache); err != nil {
		if _, serr := os.Stat(filepath.Join(cache, "vmlinuz")); serr != nil {
			t.Fatalf("install guest kernel cache: %v", err)
		}
	}
	return cache
}

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			bytes.Contains(b, []byte("module github.com/liquidmetal-go/liquidmetal\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("project go.mod not found above the working directory")
		}
		dir = parent
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// readerInit mounts the first virtio disk as iso9660 (Rock Ridge is on by
// default), reports every file as base64 between markers,
// then resets the VM (QEMU runs with -no-reboot, so it exits).
const readerInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /mnt
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_mmio virtio_blk cdrom isofs; do insmod /lib/$m.ko || echo "INSMOD-FAILED $m"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if mount -t iso9660 -o ro /dev/vda /mnt; then
  echo "MOUNT-OPTS $(grep ' /mnt ' /proc/mounts)"
  for f in /mnt/* /mnt/.[!.]*; do
    [ -e "$f" ] || continue
    echo "FILE ${f#/mnt/}"
    base64 "$f"
    echo "ENDFILE"
  done
  umount /mnt
else
  echo "MOUNT-FAILED"
fi
echo "READER-DONE"
reboot -f
`

// readInGuest boots a guest with img as its only disk and returns the
// files the guest's Linux read from it.
func readInGuest(t *testing.T, img string) map[string][]byte {
	t.Helper()
	kdir := guestKernel(t)
	work := t.TempDir()

	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	var cpio newcWriter
	cpio.dir("bin")
	cpio.dir("lib")
	cpio.dir("dev")
	cpio.charDev("dev/console", 5, 1)
	cpio.file("bin/busybox", 0o755, bb)
	cpio.file("init", 0o755, []byte(readerInit))
	for _, mod := range guestModules {
		b, err := os.ReadFile(filepath.Join(kdir, filepath.Base(mod)))
		if err != nil {
			t.Fatal(err)
		}
		cpio.file("lib/"+filepath.Base(mod), 0o644, b)
	}
	initrd := filepath.Join(work, "initrd.cpio")
	if err := os.WriteFile(initrd, cpio.finish(), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-M", "microvm,accel=tcg,rtc=on", "-cpu", "max", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
		"-kernel", filepath.Join(kdir, "vmlinuz"), "-initrd", initrd,
		"-append", "console=ttyS0 reboot=t panic=-1 quiet tsc_early_khz=2000000 tsc=reliable",
		"-drive", "id=cidata,file="+img+",format=raw,if=none,readonly=on",
		"-device", "virtio-blk-device,drive=cidata",
	)
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	console := strings.ReplaceAll(string(out), "\r", "")
	t.Logf("reader guest ran %v", time.Since(start).Round(time.Millisecond))
	if err != nil || !strings.Contains(console, "READER-DONE") {
		t.Fatalf("reader guest failed (%v); console:\n%s", err, console)
	}
	if strings.Contains(console, "INSMOD-FAILED") || strings.Contains(console, "MOUNT-FAILED") {
		t.Fatalf("guest could not mount the image; console:\n%s", console)
	}

	files := map[string][]byte{}
	sc := bufio.NewScanner(strings.NewReader(console))
	var cur string
	var b64 strings.Builder
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "MOUNT-OPTS "):
			t.Logf("guest mount: %s", strings.TrimPrefix(line, "MOUNT-OPTS "))
		case strings.HasPrefix(line, "FILE "):
			cur = strings.TrimPrefix(line, "FILE ")
			b64.Reset()
		case line == "ENDFILE" && cur != "":
			data, err := base64.StdEncoding.DecodeString(b64.String())
			if err != nil {
				t.Fatalf("guest output for %s is not base64: %v\n%s", cur, err, console)
			}
			files[cur] = data
			cur = ""
		case cur != "":
			b64.WriteString(strings.TrimSpace(line))
		}
	}
	return files
}

// newcWriter builds a cpio archive in the "newc" format the kernel unpacks
// as its initramfs.
type newcWriter struct {
	buf bytes.Buffer
	ino int
}

func (w *newcWriter) entry(name string, mode, rdevMajor, rdevMinor int, data []byte) {
	w.ino++
	nlink := 1
	if mode&0o040000 != 0 {
		nlink = 2
	}
	fmt.Fprintf(&w.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	w.buf.WriteString(name)
	w.buf.WriteByte(0)
	w.pad()
	w.buf.Write(data)
	w.pad()
}

func (w *newcWriter) pad() {
	for w.buf.Len()%4 != 0 {
		w.buf.WriteByte(0)
	}
}

func (w *newcWriter) dir(name string) { w.entry(name, 0o040755, 0, 0, nil) }
func (w *newcWriter) file(name string, perm int, data []byte) {
	w.entry(name, 0o100000|perm, 0, 0, data)
}
func (w *newcWriter) charDev(name string, major, minor int) {
	w.entry(name, 0o020600, major, minor, nil)
}

func (w *newcWriter) finish() []byte {
	w.entry("TRAILER!!!", 0, 0, 0, nil)
	return w.buf.Bytes()
}
