package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// virtiofsdOf lists the running virtiofsd processes serving VM uid.
func virtiofsdOf(t *testing.T, uid string) []int {
	t.Helper()
	pids, err := process.Find(func(argv []string) bool { return process.VirtiofsdUID(argv) == uid })
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

// TestVirtioFSVolume: a VM with an additional volume whose source is a
// host folder (virtiofs_source) at mount_point /shared sees it mounted
// there by its cloud-init mounts (over virtio-fs, served by a virtiofsd
// next to QEMU): it reads the file the test put there, and the file it
// writes appears on the host. A restarted daemon deletes the VM: no
// virtiofsd or other process is left, nor any file of the VM; the host
// folder keeps its files.
func TestVirtioFSVolume(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	share := t.TempDir()
	marker := fmt.Sprintf("host-%08x", rand.Uint32())
	if err := os.WriteFile(filepath.Join(share, "from-host"), []byte(marker+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Markers are printed as "X-$(echo Y)" so that the user-data document,
	// which the guest prints too, never matches them.
	s := volumeSpec("virtiofs", `grep ' /shared virtiofs ' /proc/mounts && echo SHARED-$(echo MOUNTED)
echo "SHARED-$(echo READ) $(cat /shared/from-host)"
echo "$(cat /shared/from-host)-from-guest" >/shared/from-guest && sync && echo SHARED-$(echo WROTE)
`)
	mp, src := "/shared", share
	s.AdditionalVolumes = []*types.Volume{{Id: "shared", MountPoint: &mp, Source: &types.VolumeSource{VirtiofsSource: &src}}}
	vm := create(t, d, s)
	uid := vm.GetSpec().GetUid()
	if got := vm.GetStatus().GetVolumes()["shared"].GetMount().GetSource(); got != share {
		t.Errorf("volume status source %q, want %q", got, share)
	}
	if len(virtiofsdOf(t, uid)) == 0 {
		t.Error("no virtiofsd runs for the VM")
	}
	d.waitConsole(vm, "LIQUIDMETAL-GUEST: mount shared on /shared ok", bootTimeout)
	d.waitConsole(vm, "SHARED-MOUNTED", bootTimeout)
	d.waitConsole(vm, "SHARED-READ "+marker, bootTimeout)
	d.waitConsole(vm, "SHARED-WROTE", bootTimeout)
	b, err := os.ReadFile(filepath.Join(share, "from-guest"))
	if err != nil || strings.TrimSpace(string(b)) != marker+"-from-guest" {
		t.Fatalf("the guest's file on the host: %q, %v", b, err)
	}

	// A daemon restarted while the VM runs deletes it.
	d.kill()
	d.start()
	if _, err := d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid}); err != nil {
		t.Fatal(err)
	}
	d.waitGone(uid, time.Minute)
	if left := virtiofsdOf(t, uid); len(left) != 0 {
		t.Errorf("virtiofsd left after delete: %v", left)
	}
	d.assertNothingLeft(vm)
	if _, err := os.Stat(filepath.Join(share, "from-host")); err != nil {
		t.Errorf("the host folder lost its file: %v", err)
	}
}
