package metadata

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

// VolumeLabel is the label cloud-init's NoCloud source looks for.
const VolumeLabel = "cidata"

// isoBlockSize is the ISO9660 logical block size.
const isoBlockSize = 2048

// minDiskSize pads the image (sparsely): label probers such as busybox's
// findfs read well past the volume descriptors and give up on a device
// smaller than that (seen: a 48 KiB image is not found, 128 KiB is).
const minDiskSize = 1 << 20

// WriteCIDataDisk writes docs as the files of a NoCloud ISO9660 image at dst.
// The image is built next to dst and renamed into place, so dst is either
// the old image or the complete new one. It must contain meta-data and
// user-data (see Documents).
func WriteCIDataDisk(docs map[string][]byte, dst string) (err error) {
	for _, required := range []string{MetaData, UserData} {
		if _, ok := docs[required]; !ok {
			return fmt.Errorf("metadata: cidata disk needs %s: %w", required, errdefs.ErrInvalidArgument)
		}
	}
	for name := range docs {
		if !safeName.MatchString(name) {
			return fmt.Errorf("metadata: %q is not a valid file name: %w", name, errdefs.ErrInvalidArgument)
		}
	}

	dir := filepath.Dir(dst)
	// CreateTemp makes the file 0600: user-data may hold secrets.
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return fmt.Errorf("metadata: creating cidata image: %w", err)
	}
	tmpName := tmp.Name()
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmpName)
		}
	}()
	// go-diskfs stages the files in a workspace folder and lays them out on
	// Finalize, which also removes the workspace.
	ws, err := os.MkdirTemp(dir, "."+filepath.Base(dst)+".ws-*")
	if err != nil {
		return fmt.Errorf("metadata: creating cidata workspace: %w", err)
	}
	defer os.RemoveAll(ws)

	fs, err := iso9660.Create(file.New(tmp, false), 0, 0, isoBlockSize, ws)
	if err != nil {
		return fmt.Errorf("metadata: creating iso9660 file system: %w", err)
	}
	for _, name := range sortedNames(docs) {
		if err := os.WriteFile(filepath.Join(fs.Workspace(), name), docs[name], 0o644); err != nil {
			return fmt.Errorf("metadata: staging %s: %w", name, err)
		}
	}
	if err := fs.Finalize(iso9660.FinalizeOptions{
		RockRidge:        true,
		VolumeIdentifier: VolumeLabel,
	}); err != nil {
		return fmt.Errorf("metadata: writing iso9660 file system: %w", err)
	}

	if st, err := tmp.Stat(); err == nil && st.Size() < minDiskSize {
		if err := tmp.Truncate(minDiskSize); err != nil {
			return fmt.Errorf("metadata: padding cidata image: %w", err)
		}
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("metadata: syncing cidata image: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("metadata: closing cidata image: %w", err)
	}
	if err := os.Rename(tmpName, dst); err != nil {
		return fmt.Errorf("metadata: installing cidata image: %w", err)
	}
	return nil
}
