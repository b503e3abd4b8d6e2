package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// Supervision of running VMs. Besides the exit watch (a pidfd per VMM,
// watchExit), every CREATED VM has a guest watch: its console log is
// polled for a kernel panic (by offset, ConsoleScanner) and its VMM's
// status API for a dead guest (QEMU's guest-panicked or internal-error).
// Either queues the VM at once; the pass then classifies what happened
// and applies the spec's restart policy: restart the VMM (after a backoff,
// keeping every file of the VM) or turn the VM FAILED with the reason.

// Restart policies (MicroVMSpec.restart_policy); empty means never.
const (
	RestartNever     = "never"
	RestartOnFailure = "on-failure"
	RestartAlways    = "always"
	// DefaultMaxRestarts is the limit of on-failure when the spec sets
	// none; always has none then.
	DefaultMaxRestarts = 5
)

// Failure reasons of a guest that died under a live VMM or panicked.
const (
	ReasonGuestPanic  = "GuestPanic"
	ReasonGuestFailed = "GuestFailed"
)

const (
	// consolePoll is how often a running VM's console log size is checked.
	consolePoll = 500 * time.Millisecond
	// livenessPoll is how often the VMM's status API is asked.
	livenessPoll = 2 * time.Second
	// Restarts wait restartBaseDelay, doubled for every earlier restart of
	// the VM, at most restartMaxDelay.
	restartBaseDelay = time.Second
	restartMaxDelay  = time.Minute
)

// supervision is what the reconciler remembers between passes about its
// running VMs. Losing it (a daemon restart) only delays: the console is
// scanned again and a due restart is scheduled again.
type supervision struct {
	mu       sync.Mutex
	panics   map[string]string         // uid -> panic line the guest watch saw
	restarts map[string]pendingRestart // uid -> the restart waiting for its backoff

	restartsTotal *prometheus.CounterVec
}

type pendingRestart struct {
	at     time.Time
	reason string
}

func newSupervision(reg prometheus.Registerer) (*supervision, error) {
	s := &supervision{
		panics:   map[string]string{},
		restarts: map[string]pendingRestart{},
		restartsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flintlockd_microvm_restarts_total",
			Help: "VMM restarts under the microVMs' restart policies, by failure reason.",
		}, []string{"reason"}),
	}
	if reg != nil {
		if err := reg.Register(s.restartsTotal); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// setPanic records the guest's panic line; it reports whether it is news.
func (s *supervision) setPanic(uid, line string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.panics[uid] == line {
		return false
	}
	s.panics[uid] = line
	return true
}

func (s *supervision) panicOf(uid string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.panics[uid]
}

func (s *supervision) pending(uid string) (pendingRestart, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.restarts[uid]
	return p, ok
}

func (s *supervision) schedule(uid string, p pendingRestart) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.restarts[uid] = p
}

// forget drops what is known of the VM (restarted, failed or deleted).
func (s *supervision) forget(uid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.panics, uid)
	delete(s.restarts, uid)
}

// maxRestarts is the spec's restart limit; 0 is none.
func maxRestarts(spec *types.MicroVMSpec) int32 {
	switch {
	case spec.GetMaxRestarts() > 0:
		return spec.GetMaxRestarts()
	case spec.GetRestartPolicy() == RestartOnFailure:
		return DefaultMaxRestarts
	}
	return 0
}

// restartDelay is the backoff before restart number n+1.
func restartDelay(n int32) time.Duration {
	d := restartBaseDelay
	for range n {
		if d *= 2; d >= restartMaxDelay {
			return restartMaxDelay
		}
	}
	return d
}

// outcome is what became of a CREATED VM's VMM and guest.
type outcome struct {
	reason, message string
	// clean: the guest powered itself off (no crash, kill or panic).
	clean bool
	// running: the VMM process still runs (a dead guest behind it).
	running bool
}

// observe classifies the VM's VMM; ok is false while the VM is healthy
// (or not started).
func (r *Reconciler) observe(ctx context.Context, b *builder) (outcome, bool, error) {
	uid := b.vm.Spec.GetUid()
	st, err := b.provider.Status(ctx, uid, b.dir)
	if err != nil {
		return outcome{}, false, err
	}
	seen := r.sup.panicOf(uid)
	switch st.State {
	case vmm.StateRunning, vmm.StatePaused:
		if seen == "" {
			return outcome{}, false, nil
		}
		return outcome{reason: ReasonGuestPanic, message: seen, running: true}, true, nil
	case vmm.StateFailed:
		if seen != "" {
			return outcome{reason: ReasonGuestPanic, message: seen, running: true}, true, nil
		}
		return outcome{reason: ReasonGuestFailed, message: st.Reason, running: true}, true, nil
	case vmm.StateExited:
		// The console of the VMM's last run says how the guest ended.
		lines := process.LastRunLines(filepath.Join(b.dir, consoleLog))
		if line := process.FindPanic(lines); line != "" {
			return outcome{reason: ReasonGuestPanic, message: line}, true, nil
		}
		reason := st.Reason
		if reason == "" {
			reason = "the VMM process exited"
		}
		return outcome{reason: ReasonVMMExited, message: exitedError(reason).Error(), clean: process.PowerOffLine(lines)}, true, nil
	}
	return outcome{}, false, nil
}

// supervise runs before the create plan of a CREATED VM. When its VMM
// exited or its guest died it applies the restart policy, and reports
// handled when the pass ends there: the VM FAILED, or a restart waits for
// its backoff (the VM is queued again for then). When a restart is due it
// stops what is left of the VMM, counts the restart and lets the plan
// start the VMM again (b.restart).
func (r *Reconciler) supervise(ctx context.Context, log *slog.Logger, b *builder) (handled bool, err error) {
	vm := b.vm
	if vm.GetStatus().GetState() != types.MicroVMStatus_CREATED {
		return false, nil
	}
	uid := vm.Spec.GetUid()
	out, ended, err := r.observe(ctx, b)
	if err != nil || !ended {
		return false, nil // the plan's own VMM step reports errors
	}
	policy := vm.Spec.GetRestartPolicy()
	restart := policy == RestartAlways || (policy == RestartOnFailure && !out.clean)
	count, limit := vm.GetStatus().GetRestartCount(), maxRestarts(vm.Spec)
	if !restart {
		return true, r.fail(ctx, log, vm, out.reason, errors.New(out.message))
	}
	if limit > 0 && count >= limit {
		return true, r.fail(ctx, log, vm, out.reason, fmt.Errorf("%s (restarted %d times, the limit of restart policy %s)", out.message, count, policy))
	}
	if out.running {
		// A dead guest behind a live VMM: end the VMM now, not later.
		if err := b.provider.Stop(ctx, uid, b.dir, 0); err != nil {
			return true, fmt.Errorf("stopping the vmm of a dead guest: %w", err)
		}
	}
	p, ok := r.sup.pending(uid)
	if !ok {
		delay := restartDelay(count)
		p = pendingRestart{at: time.Now().Add(delay), reason: out.reason}
		r.sup.schedule(uid, p)
		log.Warn("vmm ended; restarting after a backoff", "reason", out.reason, "message", out.message,
			"policy", policy, "restarts", count, "limit", limit, "delay", delay)
		if err := r.setStatus(ctx, uid, func(st *types.MicroVMStatus) {
			st.FailureReason = out.reason
			st.FailureMessage = fmt.Sprintf("%s; restarting in %v (restart policy %s)", out.message, delay, policy)
			st.VmmPid = 0
		}); err != nil {
			return true, err
		}
	}
	if wait := time.Until(p.at); wait > 0 {
		r.queue.AddAfter(uid, wait)
		return true, nil
	}
	// Due: the VMM starts again with the VM's files as they are.
	r.unwatch(uid)
	r.sup.forget(uid)
	if err := r.setStatus(ctx, uid, func(st *types.MicroVMStatus) { st.RestartCount = count + 1 }); err != nil {
		return true, err
	}
	r.sup.restartsTotal.WithLabelValues(p.reason).Inc()
	log.Info("restarting vmm", "reason", p.reason, "restart", count+1, "limit", limit)
	b.restart = true
	return false, nil
}

// watchGuest follows a running VM's console for a kernel panic and asks
// its VMM whether the guest lives, and queues the VM when either finds it
// dead. It ends with ctx (the VMM's exit watch).
func (r *Reconciler) watchGuest(ctx context.Context, uid, dir string, p vmm.Provider) {
	scanner := process.NewConsoleScanner(filepath.Join(dir, consoleLog))
	tick := time.NewTicker(consolePoll)
	defer tick.Stop()
	lastLiveness := time.Now()
	reportedDead := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		line, err := scanner.Scan()
		if err != nil {
			r.log.Debug("console scan", "uid", uid, "err", err)
		}
		if line != "" && r.sup.setPanic(uid, line) {
			r.log.Warn("guest kernel panic", "uid", uid, "line", line)
			r.queue.Add(uid)
		}
		if reportedDead || time.Since(lastLiveness) < livenessPoll {
			continue
		}
		lastLiveness = time.Now()
		sctx, cancel := context.WithTimeout(ctx, livenessPoll)
		st, err := p.Status(sctx, uid, dir)
		cancel()
		if err == nil && st.State == vmm.StateFailed {
			r.log.Warn("guest dead behind a live vmm", "uid", uid, "reason", st.Reason)
			reportedDead = true
			r.queue.Add(uid)
		}
	}
}
