package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/test/framework"
)

// volumeSpec is spec() with a user-data script of its own.
func volumeSpec(name, script string) *types.MicroVMSpec {
	s := spec(name, "")
	s.Metadata["user-data"] = base64.StdEncoding.EncodeToString([]byte("#!/bin/sh\n" + script))
	return s
}

// dfRootKB reads the "DF-ROOT <1K-blocks>" line the guest printed.
func dfRootKB(t *testing.T, d *daemon, vm *types.MicroVM) int64 {
	t.Helper()
	return consoleNumber(t, d, vm, "DF-ROOT")
}

// consoleNumber waits for a "<label> <number>" line on the console.
func consoleNumber(t *testing.T, d *daemon, vm *types.MicroVM, label string) int64 {
	t.Helper()
	re := regexp.MustCompile(regexp.QuoteMeta(label) + ` (\d+)`)
	deadline := time.Now().Add(bootTimeout)
	for {
		b, _ := os.ReadFile(filepath.Join(d.vmDir(vm), "console.log"))
		if m := re.FindSubmatch(b); m != nil {
			n, _ := strconv.ParseInt(string(m[1]), 10, 64)
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s line on the console:\n%s", label, tail(string(b), 20))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestCopyOnWriteVolumes: two VMs from one root image each get their own
// writable volume from one base image (a write in the first is invisible
// to the second and to the base); a VM with size_in_mb twice the image sees
// a root filesystem of that size; an additional volume with mount_point
// /data is mounted there by the guest's cloud-init mounts. Deleting every
// VM and collecting garbage leaves no volume file and no content; the
// collector, running every 200 ms with no grace all along, never took
// what a VM used.
func TestCopyOnWriteVolumes(t *testing.T) {
	d := startDaemon(t, "--image-gc-grace", "0s", "--image-gc-interval", "200ms")
	ctx := context.Background()
	// Markers are printed as "X-$(echo Y)" so that the user-data document,
	// which the guest prints too, never matches them.
	dfLine := `echo "DF-$(echo ROOT) $(df -k / | awk 'NR==2 {print $2}')"` + "\n" +
		`echo "VDA-$(echo SECTORS) $(cat /sys/block/vda/size)"` + "\n"

	// A: writes a file into its root, has /data from the root image.
	a := volumeSpec("cow-a", "echo from-a >/marker-a && sync && echo A-$(echo WROTE)\n"+
		dfLine+"grep ' /data ' /proc/mounts && test -x /data/sbin/init && echo DATA-$(echo MOUNTED)\n")
	root := env.Images.Root
	mp := "/data"
	a.AdditionalVolumes = []*types.Volume{{Id: "data", MountPoint: &mp, Source: &types.VolumeSource{ContainerSource: &root}}}
	vmA := create(t, d, a)
	d.waitConsole(vmA, "A-WROTE", bootTimeout)
	d.waitConsole(vmA, "LIQUIDMETAL-GUEST: mount /dev/vdb on /data ok", bootTimeout)
	d.waitConsole(vmA, "DATA-MOUNTED", bootTimeout)
	kbA := dfRootKB(t, d, vmA)

	// B: same image and size, so the same base; it must not see A's file.
	b := volumeSpec("cow-b", "if test -e /marker-a; then echo B-$(echo SEES-A); else echo B-$(echo ISOLATED); fi\n")
	vmB := create(t, d, b)
	d.waitConsole(vmB, "B-ISOLATED", bootTimeout)

	// C: twice the size.
	sizeMB := int32(2 * int64(math.Ceil(float64(kbA)/1024)))
	c := volumeSpec("cow-c", dfLine)
	c.RootVolume.SizeInMb = &sizeMB
	vmC := create(t, d, c)
	kbC := dfRootKB(t, d, vmC)
	sectors := consoleNumber(t, d, vmC, "VDA-SECTORS")
	t.Logf("root of the default size: %d KiB; with size_in_mb %d: %d KiB on %d sectors", kbA, sizeMB, kbC, sectors)
	if sectors*512 != int64(sizeMB)<<20 {
		t.Errorf("root disk of %d sectors, want %d MiB", sectors, sizeMB)
	}
	// ext4's own space (journal, inode tables) is a larger share of a
	// small filesystem: at least four fifths is left for files.
	if kbC > int64(sizeMB)*1024 || kbC < int64(sizeMB)*1024*4/5 || kbC < kbA*3/2 {
		t.Errorf("root filesystem of %d KiB does not fill %d MiB", kbC, sizeMB)
	}

	// The base images hold neither marker.
	bases, _ := filepath.Glob(filepath.Join(d.StateDir, "volumes", "base", "*.img"))
	if len(bases) != 2 {
		t.Errorf("base images %v, want 2 (default size, doubled size)", bases)
	}
	for _, base := range bases {
		out, _ := exec.Command("debugfs", "-R", "ls /", base).Output()
		if strings.Contains(string(out), "marker-a") || !strings.Contains(string(out), "sbin") {
			t.Errorf("base %s: %s", base, out)
		}
	}

	for _, vm := range []*types.MicroVM{vmA, vmB, vmC} {
		if _, err := d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: vm.GetSpec().GetUid()}); err != nil {
			t.Fatal(err)
		}
	}
	for _, vm := range []*types.MicroVM{vmA, vmB, vmC} {
		d.waitGone(vm.GetSpec().GetUid(), time.Minute)
		d.assertNothingLeft(vm)
	}
	// The collector ran all along (grace 0) and kept what the VMs used;
	// with them gone it removes the rest.
	deadline := time.Now().Add(time.Minute)
	for {
		left := leftoverVolumesAndContent(t, d)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after GC: %v", left)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func create(t *testing.T, d *daemon, s *types.MicroVMSpec) *types.MicroVM {
	t.Helper()
	resp, err := d.Client.CreateMicroVM(context.Background(), &v1alpha1.CreateMicroVMRequest{Microvm: s})
	if err != nil {
		t.Fatal(err)
	}
	return d.waitState(resp.GetMicrovm().GetSpec().GetUid(), types.MicroVMStatus_CREATED, 2*time.Minute)
}

// leftoverVolumesAndContent lists volume files of the daemon and images,
// content and snapshots left in its containerd namespace.
func leftoverVolumesAndContent(t *testing.T, d *daemon) []string {
	t.Helper()
	var left []string
	files, _ := filepath.Glob(filepath.Join(d.StateDir, "volumes", "base", "*"))
	left = append(left, files...)
	c, err := containerd.New(env.Containerd.Address, containerd.WithDefaultNamespace(framework.ContainerdNamespace))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	imgs, err := c.ImageService().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range imgs {
		left = append(left, "image "+i.Name)
	}
	err = c.ContentStore().Walk(ctx, func(info content.Info) error {
		left = append(left, "content "+info.Digest.String())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range []string{"overlayfs", "native"} {
		_ = c.SnapshotService(sn).Walk(ctx, func(_ context.Context, info snapshots.Info) error {
			left = append(left, fmt.Sprintf("snapshot %s/%s", sn, info.Name))
			return nil
		})
	}
	return left
}
