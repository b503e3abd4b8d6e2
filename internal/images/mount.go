package images

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func viewPrefix(uid string) string { return "flintlock/" + uid + "/view/" }

// viewKey names the view of img made for the VM: the same for every call,
// so a view left by a crash is found and reused rather than piling up.
func viewKey(uid string, img Image) string {
	return viewPrefix(uid) + img.ChainID.Encoded()
}

// WithMounted mounts a read-only view of img's unpacked root tree, calls fn
// with the mount point, then unmounts it and removes the view. The view is
// a snapshot under the VM's lease (created if needed), so even a crash
// leaves nothing that outlives DeleteLease. Nothing stays mounted when
// WithMounted returns, also when fn fails or panics. Calls for the same VM
// and image are serialized.
func (s *Service) WithMounted(ctx context.Context, uid string, img Image, fn func(root string) error) (retErr error) {
	if img.ChainID == "" || img.Snapshotter == "" {
		return fmt.Errorf("image %q has not been pulled: %w", img.Ref, errdefs.ErrInvalidArgument)
	}
	lctx, err := s.EnsureLease(ctx, uid)
	if err != nil {
		return err
	}
	key := viewKey(uid, img)
	unlock := s.locks.Lock("view\x00" + key)
	defer unlock()

	sn := s.client.SnapshotService(img.Snapshotter)
	mounts, err := sn.View(lctx, key, img.ChainID.String(), snapshots.WithLabels(map[string]string{uidLabel: uid}))
	if errdefs.IsAlreadyExists(err) {
		mounts, err = sn.Mounts(lctx, key)
	}
	if err != nil {
		return fmt.Errorf("view of image %q: %w", img.Ref, err)
	}
	// Clean-up must run even when ctx is cancelled.
	cctx := context.WithoutCancel(lctx)
	defer func() {
		if err := sn.Remove(cctx, key); err != nil && !errdefs.IsNotFound(err) {
			retErr = errors.Join(retErr, fmt.Errorf("removing view %s: %w", key, err))
		}
	}()

	dir, err := os.MkdirTemp(s.opts.TempDir, "flintlock-view-")
	if err != nil {
		return fmt.Errorf("mount point: %w", err)
	}
	defer func() {
		if err := unmountAll(dir); err != nil {
			// Never remove a folder that may still be a mount.
			retErr = errors.Join(retErr, err)
			return
		}
		if err := os.Remove(dir); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("removing mount point: %w", err))
		}
	}()
	if err := mount.All(mounts, dir); err != nil {
		return fmt.Errorf("mounting image %q: %w", img.Ref, err)
	}
	return fn(dir)
}

// unmountAll unmounts everything stacked on dir, lazily as a last resort
// (a process still inside the mount then keeps it alive privately, but it is
// gone from the mount table).
func unmountAll(dir string) error {
	err := mount.UnmountAll(dir, 0)
	if err == nil {
		return nil
	}
	if derr := mount.UnmountAll(dir, unix.MNT_DETACH); derr != nil {
		return fmt.Errorf("unmounting %s: %w", dir, errors.Join(err, derr))
	}
	return nil
}
