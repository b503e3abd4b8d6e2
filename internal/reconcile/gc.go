package reconcile

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// GCResult is what one garbage collection removed.
type GCResult struct {
	BaseImages []string
	Images     []string
}

// CollectGarbage removes the base volume images and the pulled images no
// VM uses and nothing used for Config.ImageGCGrace. Every VM in the store
// (any state: a deleted VM is no longer there) keeps the images it names;
// a base image is kept while a VM's volume links to it (volumes.GC).
func (r *Reconciler) CollectGarbage(ctx context.Context) (GCResult, error) {
	var res GCResult
	vms, err := r.cfg.Store.List(ctx, "", nil)
	if err != nil {
		return res, fmt.Errorf("gc: listing microvms: %w", err)
	}
	inUse := map[string]bool{}
	for _, vm := range vms {
		for _, ref := range imageRefs(vm.GetSpec()) {
			inUse[ref] = true
		}
	}
	var errs []error
	res.BaseImages, err = r.cfg.Volumes.GC(r.cfg.ImageGCGrace)
	if err != nil {
		errs = append(errs, err)
	}
	if r.cfg.Images != nil {
		ir, err := r.cfg.Images.GC(ctx, inUse, r.cfg.ImageGCGrace)
		res.Images = ir.Images
		if err != nil {
			errs = append(errs, err)
		}
	}
	return res, errors.Join(errs...)
}

// RunGC collects garbage every interval until ctx ends.
func (r *Reconciler) RunGC(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := r.CollectGarbage(ctx); err != nil && ctx.Err() == nil {
				r.log.Warn("garbage collection", "err", err)
			}
		}
	}
}
