package reconcile

import (
	"testing"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/metadata"
)

// A host folder volume with a mount_point is mounted by its virtio-fs tag
// and takes no block device name: the block volume after it stays vdb.
func TestVolumeMountsSharedFolder(t *testing.T) {
	img, share := "reg.test/img:1", "/srv/share"
	mp := func(s string) *string { return &s }
	spec := &types.MicroVMSpec{
		RootVolume: &types.Volume{Id: "root", Source: &types.VolumeSource{ContainerSource: &img}},
		AdditionalVolumes: []*types.Volume{
			{Id: "shared", MountPoint: mp("/shared"), Source: &types.VolumeSource{VirtiofsSource: &share}},
			{Id: "ro", MountPoint: mp("/ro"), IsReadOnly: true, Source: &types.VolumeSource{VirtiofsSource: &share}},
			{Id: "data", MountPoint: mp("/data"), Source: &types.VolumeSource{ContainerSource: &img}},
		},
	}
	got := volumeMounts(spec)
	want := []metadata.Mount{
		{Device: "shared", MountPoint: "/shared", FSType: "virtiofs", Options: "defaults"},
		{Device: "ro", MountPoint: "/ro", FSType: "virtiofs", Options: "ro"},
		{Device: "/dev/vdb", MountPoint: "/data"},
	}
	if len(got) != len(want) {
		t.Fatalf("mounts %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("mount %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}
