package reconcile

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// volumeDevice names the devmapper device of a VM's volume (unique per VM
// and volume; volumes.VolumeOptions.Name).
func volumeDevice(uid, volumeID string) string {
	return "flintlock-" + uid + "-" + volumeID
}

// releaseVolumes gives back what the VM's volumes hold outside its folder
// (a devmapper volume's snapshot device and thin volume) and removes the
// volume files. It runs after the VMM stopped, before the folder goes.
func (r *Reconciler) releaseVolumes(ctx context.Context, spec *types.MicroVMSpec) error {
	if r.cfg.Volumes == nil {
		return nil
	}
	dir := filepath.Join(r.vmDir(spec), volumesDir)
	var errs []error
	for _, v := range volumeList(spec) {
		if isShared(v) {
			continue
		}
		path := filepath.Join(dir, v.GetId()+".img")
		if err := r.cfg.Volumes.Release(ctx, path, volumeDevice(spec.GetUid(), v.GetId())); err != nil {
			errs = append(errs, fmt.Errorf("releasing volume %s: %w", v.GetId(), err))
		}
	}
	return errors.Join(errs...)
}
