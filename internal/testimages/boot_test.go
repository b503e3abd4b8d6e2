package testimages

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

var (
	buildOnce sync.Once
	built     *Artifacts
	buildErr  error
)

// artifacts builds (or finds cached) the guest in the repository's cache,
// once per test binary.
func artifacts(t *testing.T) *Artifacts {
	t.Helper()
	buildOnce.Do(func() {
		root, err := testenv.RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		built, buildErr = Build(ctx, filepath.Join(root, "bin", "cache", "guest"))
	})
	if buildErr != nil {
		t.Fatalf("build guest artifacts: %v", buildErr)
	}
	return built
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// cidataDocs are a NoCloud seed whose user-data is a script whose output
// can only come from running it in the guest.
func cidataDocs(instanceID, hostname string) map[string]string {
	return map[string]string{
		"meta-data": fmt.Sprintf("instance-id: %s\nlocal-hostname: %s\n", instanceID, hostname),
		"user-data": `#!/bin/sh
echo "USERDATA answer=$(( 6 * 7 )) host=$(hostname) root=$(cat /etc/liquidmetal-release 2>/dev/null || echo initrd)"
echo "USERDATA cidata=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA)"
for b in /sys/block/vd*; do echo "USERDATA disk ${b##*/} sectors=$(cat "$b/size")"; done
`,
	}
}

// isoCidata writes an iso9660 (Rock Ridge) image labelled cidata.
func isoCidata(t *testing.T, path string, docs map[string]string) {
	t.Helper()
	d, err := diskfs.Create(path, 4<<20, diskfs.SectorSizeDefault)
	if err != nil {
		t.Fatal(err)
	}
	d.LogicalBlocksize = 2048
	fsys, err := d.CreateFilesystem(disk.FilesystemSpec{FSType: filesystem.TypeISO9660, VolumeLabel: "cidata", WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	writeDocs(t, fsys, docs)
	iso := fsys.(*iso9660.FileSystem)
	if err := iso.Finalize(iso9660.FinalizeOptions{RockRidge: true, VolumeIdentifier: "cidata"}); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

// fatCidata writes a FAT image labelled CIDATA.
func fatCidata(t *testing.T, path string, docs map[string]string) {
	t.Helper()
	d, err := diskfs.Create(path, 40<<20, diskfs.SectorSizeDefault)
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := d.CreateFilesystem(disk.FilesystemSpec{FSType: filesystem.TypeFat32, VolumeLabel: "CIDATA"})
	if err != nil {
		t.Fatal(err)
	}
	writeDocs(t, fsys, docs)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

func writeDocs(t *testing.T, fsys filesystem.FileSystem, docs map[string]string) {
	t.Helper()
	for name, content := range docs {
		f, err := fsys.OpenFile("/"+name, os.O_CREATE|os.O_RDWR)
		if err != nil {
			t.Fatalf("cidata %s: %v", name, err)
		}
		if _, err := f.Write([]byte(content)); err != nil {
			t.Fatalf("cidata %s: %v", name, err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

type qemuDisk struct {
	path     string
	readOnly bool
}

// bootQEMU starts QEMU microvm under TCG (the recipe that boots reliably
// here) with the disks attached in order, and returns the console log. QEMU
// is killed when the test ends.
func bootQEMU(t *testing.T, kernel, initrd, cmdline string, disks ...qemuDisk) string {
	t.Helper()
	return bootQEMUWith(t, kernel, initrd, cmdline, nil, disks...)
}

// bootQEMUWith is bootQEMU with extra QEMU arguments (network devices).
func bootQEMUWith(t *testing.T, kernel, initrd, cmdline string, extra []string, disks ...qemuDisk) string {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skipf("SKIP: qemu-system-x86_64 not installed (Debian qemu-system-x86): %v", err)
	}
	dir := t.TempDir()
	console := filepath.Join(dir, "console.log")
	args := []string{
		"-M", "microvm,accel=tcg,rtc=on", "-cpu", "max", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-serial", "file:" + console,
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 reboot=t panic=-1 quiet tsc_early_khz=2000000 tsc=reliable " + cmdline,
	}
	for i, d := range disks {
		drive := fmt.Sprintf("id=d%d,file=%s,format=raw,if=none", i, d.path)
		if d.readOnly {
			drive += ",readonly=on"
		}
		args = append(args, "-drive", drive, "-device", fmt.Sprintf("virtio-blk-device,drive=d%d", i))
	}
	args = append(args, extra...)
	cmd := exec.Command(qemu, args...)
	out, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	return console
}

// waitConsole waits until the console log holds every wanted line
// fragment, and returns the log (without carriage returns).
func waitConsole(t *testing.T, console string, timeout time.Duration, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(console)
		log := strings.ReplaceAll(string(b), "\r", "")
		missing := ""
		for _, w := range want {
			if !strings.Contains(log, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			if testing.Verbose() {
				t.Logf("console:\n%s", log)
			}
			return log
		}
		if time.Now().After(deadline) {
			t.Fatalf("console has no %q after %v:\n%s", missing, timeout, log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestBoot boots the artifacts under QEMU microvm (TCG) in the three ways
// the providers use them and checks the guest ran its init and the
// user-data script from a cidata disk.
func TestBoot(t *testing.T) {
	a := artifacts(t)

	t.Run("initrd-only-iso-cidata", func(t *testing.T) {
		t.Parallel()
		host := "lm-" + randomHex(t, 4)
		id := "i-" + randomHex(t, 8)
		docs := cidataDocs(id, host)
		cidata := filepath.Join(t.TempDir(), "cidata.iso")
		isoCidata(t, cidata, docs)
		console := bootQEMU(t, a.Vmlinuz, a.Initrd, "", qemuDisk{path: cidata, readOnly: true})
		log := waitConsole(t, console, 60*time.Second,
			BootedMarker,
			"--- meta-data ---\ninstance-id: "+id+"\nlocal-hostname: "+host+"\n--- end meta-data ---",
			"--- user-data ---\n#!/bin/sh\n",
			"USERDATA answer=42 host="+host+" root=initrd\n",
			"USERDATA cidata=/dev/vda\n",
			"LIQUIDMETAL-GUEST: user-data exited 0")
		if !strings.Contains(log, "/dev/vda is the cidata disk, not a root disk") {
			t.Errorf("the initrd did not recognise the cidata disk as such:\n%s", log)
		}
	})

	t.Run("ext4-root-disk", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		root := filepath.Join(dir, "root.ext4")
		if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "lmroot", "-d", a.RootFSDir, root, "64M").CombinedOutput(); err != nil {
			t.Fatalf("mkfs.ext4: %v: %s", err, out)
		}
		host := "lm-" + randomHex(t, 4)
		docs := cidataDocs("i-"+randomHex(t, 8), host)
		cidata := filepath.Join(dir, "cidata.iso")
		isoCidata(t, cidata, docs)
		data := filepath.Join(dir, "data.img")
		if err := os.WriteFile(data, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(data, 16<<20); err != nil {
			t.Fatal(err)
		}
		// Root first, an extra volume, cidata last: the order flintlockd
		// attaches them in. The guest names them in -device order.
		console := bootQEMU(t, a.Vmlinuz, a.Initrd, "",
			qemuDisk{path: root}, qemuDisk{path: data}, qemuDisk{path: cidata, readOnly: true})
		waitConsole(t, console, 60*time.Second,
			"switching to the root filesystem on /dev/vda (rw)",
			"started from the root filesystem",
			BootedMarker,
			"USERDATA answer=42 host="+host+" root=liquidmetal test guest",
			"USERDATA disk vda sectors=131072\n", // 64 MiB root
			"USERDATA disk vdb sectors=32768\n",  // 16 MiB data
			"USERDATA cidata=/dev/vdc\n",
			"LIQUIDMETAL-GUEST: user-data exited 0")
	})

	t.Run("vmlinux-pvh-fat-cidata", func(t *testing.T) {
		t.Parallel()
		host := "lm-" + randomHex(t, 4)
		docs := cidataDocs("i-"+randomHex(t, 8), host)
		cidata := filepath.Join(t.TempDir(), "cidata.img")
		fatCidata(t, cidata, docs)
		// The uncompressed kernel boots through its PVH entry point, as in
		// Firecracker and Cloud Hypervisor; this proves ExtractVmlinux.
		console := bootQEMU(t, a.Vmlinux, a.Initrd, "root=/dev/vda", qemuDisk{path: cidata})
		waitConsole(t, console, 60*time.Second,
			"/dev/vda has no /sbin/init",
			BootedMarker,
			"USERDATA answer=42 host="+host+" root=initrd\n",
			"USERDATA cidata=/dev/vda\n",
			"LIQUIDMETAL-GUEST: user-data exited 0")
	})
}
