package reconcile

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/images"
	"github.com/liquidmetal-go/liquidmetal/internal/metadata"
	"github.com/liquidmetal-go/liquidmetal/internal/volumes"
)

// DiskImagePaths are where a container image holding a partitioned disk
// image (a volume with partition_id) keeps it: disk.img at its root, else
// the only file of its disk/ folder (the containerDisk convention).
var DiskImagePaths = []string{"disk.img", "disk"}

// provisionVolume gives the VM its volume v: the image is pulled under the
// VM's lease, its base image (the ext4 filesystem of the image's tree at
// the requested size, or the partition of its disk image) is built once
// per host, and the VM gets a copy-on-write volume of it. A size too small
// for the content, or a missing partition, fails the VM for good.
func (b *builder) provisionVolume(ctx context.Context, v *types.Volume) error {
	lctx, err := b.leased(ctx)
	if err != nil {
		return err
	}
	img, err := b.r.cfg.Images.Pull(lctx, v.GetSource().GetContainerSource())
	if err != nil {
		return err
	}
	uid := b.vm.Spec.GetUid()
	key := volumes.BaseKey{Digest: img.ChainID.String(), SizeMB: int(v.GetSizeInMb()), Partition: v.GetPartitionId()}
	build := func(ctx context.Context, dst string) error {
		return b.r.cfg.Images.WithMounted(lctx, uid, img, func(root string) error {
			if key.Partition != "" {
				return extractPartition(ctx, root, key.Partition, dst, key.SizeMB)
			}
			return volumes.BuildExt4(ctx, root, dst, key.SizeMB, v.GetId())
		})
	}
	vol, err := b.r.cfg.Volumes.Volume(lctx, key, build, b.volumePath(v.GetId()), volumes.VolumeOptions{
		ReadOnly: v.GetIsReadOnly(),
		RawOnly:  !b.provider.Capabilities().Qcow2,
		Name:     volumeDevice(uid, v.GetId()),
	})
	if errdefs.IsInvalidArgument(err) {
		return permanent(err)
	}
	if err != nil {
		return err
	}
	b.r.log.Debug("volume ready", "uid", uid, "volume", v.GetId(), "method", vol.Method, "format", vol.Format, "base", filepath.Base(vol.Base), "built", vol.BaseBuilt)
	return nil
}

// extractPartition finds the disk image in the image's tree at root and
// writes its partition to dst.
func extractPartition(ctx context.Context, root, partition, dst string, sizeMB int) error {
	n, err := volumes.PartitionNumber(partition)
	if err != nil {
		return err
	}
	disk, err := findDiskImage(root)
	if err != nil {
		return err
	}
	return volumes.ExtractPartition(ctx, disk, n, dst, sizeMB)
}

func findDiskImage(root string) (string, error) {
	for _, p := range DiskImagePaths {
		full := filepath.Join(root, p)
		fi, err := os.Lstat(full)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		if fi.Mode().IsRegular() {
			return full, nil
		}
		if !fi.IsDir() {
			continue
		}
		entries, err := os.ReadDir(full)
		if err != nil {
			return "", err
		}
		var files []string
		for _, e := range entries {
			if e.Type().IsRegular() {
				files = append(files, filepath.Join(full, e.Name()))
			}
		}
		if len(files) == 1 {
			return files[0], nil
		}
	}
	return "", fmt.Errorf("partition_id needs a disk image in the image (%v): %w", DiskImagePaths, errdefs.ErrInvalidArgument)
}

// diskFormat is the format of a volume file made by provisionVolume.
func diskFormat(path string) string {
	f, err := volumes.DetectFormat(path)
	if err != nil {
		return volumes.FormatRaw // the VMM reports the file itself
	}
	return f
}

// guestDisk is the guest's device name of the i-th disk attached
// (virtio-blk: vda, vdb, ...).
func guestDisk(i int) string {
	name := ""
	for i++; i > 0; i = (i - 1) / 26 {
		name = string(rune('a'+(i-1)%26)) + name
	}
	return "/dev/vd" + name
}

// volumeMounts are the cloud-init mounts of the VM's volumes that name a
// mount_point: block volumes by their guest device (root first, in
// order), host folders by their virtio-fs tag (the volume id).
func volumeMounts(spec *types.MicroVMSpec) []metadata.Mount {
	var ms []metadata.Mount
	i := 0
	for _, v := range volumeList(spec) {
		if isShared(v) { // no block device
			if mp := v.GetMountPoint(); mp != "" && v != spec.GetRootVolume() {
				opts := "defaults"
				if v.GetIsReadOnly() {
					opts = "ro"
				}
				ms = append(ms, metadata.Mount{Device: v.GetId(), MountPoint: mp, FSType: "virtiofs", Options: opts})
			}
			continue
		}
		if mp := v.GetMountPoint(); mp != "" && v != spec.GetRootVolume() {
			ms = append(ms, metadata.Mount{Device: guestDisk(i), MountPoint: mp})
		}
		i++
	}
	return ms
}

func volumeList(spec *types.MicroVMSpec) []*types.Volume {
	var vs []*types.Volume
	for _, v := range volumeFields(spec) {
		vs = append(vs, v)
	}
	return vs
}

// withVolumeMounts merges the volume mounts into the documents'
// vendor-data.
func withVolumeMounts(spec *types.MicroVMSpec, docs map[string][]byte) error {
	ms := volumeMounts(spec)
	if len(ms) == 0 {
		return nil
	}
	vd, err := metadata.WithMounts(docs[metadata.VendorData], ms)
	if err != nil {
		return err
	}
	docs[metadata.VendorData] = vd
	return nil
}

// imageRefs are the normalized references of every image the VM uses.
func imageRefs(spec *types.MicroVMSpec) []string {
	refs := []string{spec.GetKernel().GetImage(), spec.GetInitrd().GetImage()}
	for _, v := range volumeFields(spec) {
		refs = append(refs, v.GetSource().GetContainerSource())
	}
	var out []string
	for _, r := range refs {
		if r == "" {
			continue
		}
		if n, err := images.NormalizeRef(r); err == nil {
			out = append(out, n)
		}
	}
	return out
}
