package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

// consoleLog is kept when a VM fails, for diagnosis; delete removes it.
const consoleLog = "console.log"

// delete releases everything the VM holds, then removes its record. Each
// part is idempotent, so an interrupted delete resumes where it stopped.
func (r *Reconciler) delete(ctx context.Context, log *slog.Logger, vm *types.MicroVM) error {
	if vm.GetStatus().GetState() != types.MicroVMStatus_DELETING {
		if err := r.setStatus(ctx, vm.Spec.GetUid(), func(*types.MicroVMStatus) {}); err != nil {
			return err
		}
	}
	r.unwatch(vm.Spec.GetUid())
	if err := r.release(ctx, vm, false); err != nil {
		_ = r.setStatus(ctx, vm.Spec.GetUid(), func(st *types.MicroVMStatus) {
			st.FailureReason = "DeleteFailed"
			st.FailureMessage = err.Error()
		})
		return err
	}
	if err := r.cfg.Store.Delete(ctx, vm.Spec.GetUid()); err != nil {
		return err
	}
	log.Info("microvm deleted")
	return nil
}

// fail marks the VM FAILED with the reason and releases what it holds but
// its console log.
func (r *Reconciler) fail(ctx context.Context, log *slog.Logger, vm *types.MicroVM, reason string, cause error) error {
	log.Error("microvm failed", "reason", reason, "err", cause)
	r.unwatch(vm.Spec.GetUid())
	relErr := r.release(ctx, vm, true)
	err := r.setStatus(ctx, vm.Spec.GetUid(), func(st *types.MicroVMStatus) {
		st.State = types.MicroVMStatus_FAILED
		st.FailureReason = reason
		st.FailureMessage = cause.Error()
		st.VmmPid = 0
		if relErr != nil {
			st.FailureMessage += "; releasing resources: " + relErr.Error()
		}
	})
	return errors.Join(err, relErr)
}

// release stops the VMM and frees the VM's devices, containerd lease and
// files. With keepConsole the folder and its console log stay.
func (r *Reconciler) release(ctx context.Context, vm *types.MicroVM, keepConsole bool) error {
	spec := vm.Spec
	uid := spec.GetUid()
	dir := r.vmDir(spec)
	var errs []error
	if p, ok := r.cfg.Providers[spec.GetProvider()]; ok {
		if err := p.Stop(ctx, uid, dir, r.cfg.StopTimeout); err != nil {
			errs = append(errs, fmt.Errorf("stopping vmm: %w", err))
		}
	} else if pidAlive(dir) {
		errs = append(errs, fmt.Errorf("provider %q is not available to stop the vmm", spec.GetProvider()))
	}
	// Before its TAPs go: a new VM may get their names.
	if r.cfg.Metadata != nil {
		if err := r.cfg.Metadata.Unregister(uid); err != nil {
			errs = append(errs, fmt.Errorf("unregistering from the metadata service: %w", err))
		}
	}
	if r.cfg.Network != nil && len(spec.GetInterfaces()) > 0 {
		if err := r.cfg.Network.Remove(ctx, uid, len(spec.GetInterfaces())); err != nil {
			errs = append(errs, fmt.Errorf("removing network devices: %w", err))
		}
	}
	if r.cfg.Images != nil {
		if err := r.cfg.Images.DeleteLease(ctx, uid); err != nil {
			errs = append(errs, fmt.Errorf("releasing images: %w", err))
		}
	}
	if len(errs) == 0 { // the VMM no longer holds its volumes
		if err := r.releaseVolumes(ctx, spec); err != nil { // volumes_release.go
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if keepConsole {
		return removeAllBut(dir, consoleLog)
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	// Prune the now empty name and namespace folders.
	for d, stop := filepath.Dir(dir), filepath.Join(r.cfg.StateDir, "vm"); d != stop && len(d) > len(stop); d = filepath.Dir(d) {
		if os.Remove(d) != nil {
			break
		}
	}
	return nil
}

func removeAllBut(dir, keep string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if e.Name() != keep {
			errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

// pidAlive reports whether the VM folder records a running VMM; used only
// when the VM's provider has gone from the configuration.
func pidAlive(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "vmm.pid"))
	return err == nil
}

// watchExit queues the VM as soon as its VMM process exits, so the status
// reflects it without waiting for the next resync.
func (r *Reconciler) watchExit(uid, dir string, p vmm.Provider) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.watching[uid]; ok {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := p.Wait(ctx, uid, dir)
	if err != nil {
		cancel()
		r.log.Warn("cannot watch vmm process", "uid", uid, "err", err)
		return
	}
	r.watching[uid] = cancel
	go r.watchGuest(ctx, uid, dir, p) // supervise.go
	go func() {
		select {
		case <-ch:
			r.mu.Lock()
			delete(r.watching, uid)
			r.mu.Unlock()
			cancel()
			r.queue.Add(uid)
		case <-ctx.Done():
		}
	}()
}

func (r *Reconciler) unwatch(uid string) {
	r.sup.forget(uid)
	r.mu.Lock()
	defer r.mu.Unlock()
	if cancel, ok := r.watching[uid]; ok {
		cancel()
		delete(r.watching, uid)
	}
}
