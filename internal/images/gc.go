package images

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/core/images"
)

// lastUsedLabel on an image record is when a pull last used it (RFC 3339).
const lastUsedLabel = "flintlock/last-used"

// lastUsedResolution: a pull refreshes the label only when it is older.
const lastUsedResolution = time.Minute

// markUsed records that the image name was just used, for GC's grace
// period. A failure only makes the image look older to GC.
func (s *Service) markUsed(ctx context.Context, name string) {
	is := s.client.ImageService()
	rec, err := is.Get(ctx, name)
	if err != nil {
		return
	}
	if t, err := time.Parse(time.RFC3339, rec.Labels[lastUsedLabel]); err == nil && time.Since(t) < lastUsedResolution {
		return
	}
	if rec.Labels == nil {
		rec.Labels = map[string]string{}
	}
	rec.Labels[lastUsedLabel] = time.Now().UTC().Format(time.RFC3339)
	if _, err := is.Update(ctx, rec, "labels."+lastUsedLabel); err != nil {
		s.log.Debug("recording image use", "ref", name, "err", err)
	}
}

// lastUsed is when the image was last pulled or used by a pull.
func lastUsed(rec images.Image) time.Time {
	if t, err := time.Parse(time.RFC3339, rec.Labels[lastUsedLabel]); err == nil {
		return t
	}
	if rec.UpdatedAt.After(rec.CreatedAt) {
		return rec.UpdatedAt
	}
	return rec.CreatedAt
}

// GCResult is what GC removed.
type GCResult struct {
	// Images are the references removed from containerd's image store.
	Images []string
	// CachedImages counts the images whose extracted files went.
	CachedImages int
}

// GC removes from containerd's image store every image of the namespace
// whose reference is not in inUse (normalized references, NormalizeRef)
// and that no pull has used for grace (call it with a ctx carrying no
// lease), then the file cache of images whose
// snapshot is gone. Content and snapshots go with the image unless a VM's
// lease still holds them (containerd's own collector runs before each
// removal returns), so a live VM never loses what it pulled.
func (s *Service) GC(ctx context.Context, inUse map[string]bool, grace time.Duration) (GCResult, error) {
	var res GCResult
	ctx = s.withNamespace(ctx)
	recs, err := s.client.ImageService().List(ctx)
	if err != nil {
		return res, fmt.Errorf("image gc: listing images: %w", err)
	}
	var errs []error
	for _, rec := range recs {
		if inUse[rec.Name] || time.Since(lastUsed(rec)) < grace {
			continue
		}
		// The pull lock: no pull of this reference runs meanwhile.
		unlock := s.locks.Lock("pull\x00" + rec.Name)
		err := s.client.ImageService().Delete(ctx, rec.Name, images.SynchronousDelete())
		unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("image gc: removing %s: %w", rec.Name, err))
			continue
		}
		res.Images = append(res.Images, rec.Name)
	}
	if len(res.Images) > 0 {
		s.log.Info("images collected", "removed", res.Images)
	}
	n, err := s.PruneCache(ctx)
	res.CachedImages = n
	if err != nil {
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}
