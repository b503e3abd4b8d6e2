package reconcile

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/store"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

// Power operations. The power service records what it asks in
// spec.power (stopped, restart_generation, stop_timeout) and queues the
// VM; a pass carries it out here, before the create plan:
//
//   - stopped: the VMM is stopped (gracefully within the timeout, then by
//     force) and status.detailed_state turns STOPPED. Files, volumes,
//     network devices and the lease stay. state stays CREATED, so neither
//     resync nor the exit watch treats the VM as failed, and the create
//     plan does not run: the VM stays stopped across daemon restarts.
//   - restart_generation above status.restart_generation: the VMM is
//     stopped the same way, the generation recorded, and the create plan
//     that follows starts it again.
//   - neither, with detailed_state STOPPED (a Start): the create plan
//     finds the VMM exited, which for a STOPPED VM means "start it" rather
//     than a failure, and starts it with the same files; create records
//     RUNNING.

// power carries out spec.power for a CREATED VM. It returns the VM to go
// on with (re-read when it stopped the VMM) and done=true when the pass is
// over because the VM is to stay stopped.
func (r *Reconciler) power(ctx context.Context, log *slog.Logger, vm *types.MicroVM) (_ *types.MicroVM, done bool, _ error) {
	st := vm.GetStatus()
	if st.GetState() != types.MicroVMStatus_CREATED {
		return vm, false, nil
	}
	pw := vm.GetSpec().GetPower()
	restart := !pw.GetStopped() && pw.GetRestartGeneration() > st.GetRestartGeneration()
	if !pw.GetStopped() && !restart {
		return vm, false, nil
	}
	p, ok := r.cfg.Providers[vm.GetSpec().GetProvider()]
	if !ok {
		return vm, false, nil // the create pass fails it
	}
	uid, dir := vm.GetSpec().GetUid(), r.vmDir(vm.GetSpec())
	if pw.GetStopped() && store.DetailedState(st) == types.MicroVMStatus_STOPPED {
		// Stays stopped; stop a VMM found running anyway (started by hand).
		s, err := p.Status(ctx, uid, dir)
		if err != nil {
			return vm, true, err
		}
		if s.State != vmm.StateRunning && s.State != vmm.StatePaused {
			return vm, true, nil
		}
	}
	timeout := r.cfg.StopTimeout
	if pw.GetStopTimeout() != nil {
		timeout = pw.GetStopTimeout().AsDuration()
	}
	// The exit is ours: no exit watch may report it.
	r.unwatch(uid)
	if err := p.Stop(ctx, uid, dir, timeout); err != nil {
		return vm, true, fmt.Errorf("stopping vmm: %w", err)
	}
	if err := r.setStatus(ctx, uid, func(st *types.MicroVMStatus) {
		st.DetailedState = types.MicroVMStatus_STOPPED
		st.VmmPid = 0
		st.RestartGeneration = max(st.GetRestartGeneration(), pw.GetRestartGeneration())
	}); err != nil {
		return vm, true, err
	}
	if !restart {
		log.Info("microvm stopped", "timeout", timeout)
		return vm, true, nil
	}
	log.Info("microvm stopped for a restart", "timeout", timeout)
	vm, err := r.cfg.Store.Get(ctx, uid)
	if err != nil {
		return nil, true, err
	}
	switch {
	case vm.GetSpec().GetDeletedAt() != nil:
		return vm, true, r.delete(ctx, log, vm)
	case vm.GetSpec().GetPower().GetStopped(): // stopped meanwhile
		return vm, true, nil
	}
	return vm, false, nil
}
