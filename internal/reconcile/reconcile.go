// Package reconcile drives every stored microVM toward its spec. A
// de-duplicating work queue feeds a pool of workers; each pass loads the
// VM's record, builds a plan of idempotent steps (create or delete) and runs
// it. Failures retry with exponential backoff and end in FAILED after a
// bounded number of tries, releasing what the VM held. On start every stored
// VM is queued, which re-adopts VMM processes left running by an earlier
// flintlockd.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/client-go/util/workqueue"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/images"
	"github.com/liquidmetal-go/liquidmetal/internal/network"
	"github.com/liquidmetal-go/liquidmetal/internal/store"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/volumes"
)

// Config holds the reconciler's collaborators and tunables.
type Config struct {
	Store     *store.Store
	Images    *images.Service
	Network   *network.Manager
	Providers map[string]vmm.Provider
	// Metadata, when set, serves each VM with TAP interfaces its documents
	// over the network; VMs are registered on every pass and unregistered
	// when they are deleted or fail.
	Metadata MetadataService
	// StateDir holds the VMs' folders under vm/<namespace>/<name>/<uid>.
	StateDir string
	// Volumes makes the VMs' volumes from base images (volumes.go); when
	// nil, one on StateDir/volumes with the host's method.
	Volumes *volumes.Provisioner
	// ImageGCGrace is how long base images and pulled images stay after
	// their last use (gc.go).
	ImageGCGrace time.Duration
	// Workers is the number of VMs reconciled at once.
	Workers int
	// MaxRetries is the number of failed passes after which a VM is FAILED.
	MaxRetries     int
	RetryBaseDelay time.Duration
	RetryMaxDelay  time.Duration
	// ResyncPeriod re-queues every VM periodically.
	ResyncPeriod time.Duration
	// StopTimeout is the graceful shutdown time given to a VMM on delete.
	StopTimeout time.Duration
	// StartPaused starts VMMs with the guest stopped (benchmarks use it to
	// keep the guest's boot out of the create figure).
	StartPaused bool
	// AfterStep, when set, is called after each step of a create plan
	// that ran and took effect (fault injection for crash tests).
	AfterStep  func(uid, step string)
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Reconciler reconciles microVMs.
type Reconciler struct {
	cfg     Config
	log     *slog.Logger
	queue   workqueue.TypedRateLimitingInterface[string]
	metrics *metrics
	sup     *supervision // supervise.go

	mu       sync.Mutex
	watching map[string]context.CancelFunc
}

// New returns a Reconciler; Run starts it.
func New(cfg Config) (*Reconciler, error) {
	if cfg.Store == nil || len(cfg.Providers) == 0 {
		return nil, errors.New("reconcile: a store and at least one provider are required")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.MaxRetries <= 0 {
		cfg.MaxRetries = 5
	}
	if cfg.RetryBaseDelay <= 0 {
		cfg.RetryBaseDelay = 500 * time.Millisecond
	}
	if cfg.RetryMaxDelay <= 0 {
		cfg.RetryMaxDelay = time.Minute
	}
	if cfg.ResyncPeriod <= 0 {
		cfg.ResyncPeriod = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Volumes == nil {
		v, err := volumes.NewProvisioner(volumes.ProvisionerOptions{Dir: filepath.Join(cfg.StateDir, "volumes"), Logger: cfg.Logger})
		if err != nil {
			return nil, err
		}
		cfg.Volumes = v
	}
	m, err := newMetrics(cfg.Registerer, cfg.Store)
	if err != nil {
		return nil, err
	}
	sup, err := newSupervision(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	limiter := workqueue.NewTypedItemExponentialFailureRateLimiter[string](cfg.RetryBaseDelay, cfg.RetryMaxDelay)
	return &Reconciler{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "reconcile"),
		queue:    workqueue.NewTypedRateLimitingQueueWithConfig(limiter, workqueue.TypedRateLimitingQueueConfig[string]{Name: "microvms"}),
		metrics:  m,
		sup:      sup,
		watching: map[string]context.CancelFunc{},
	}, nil
}

// Enqueue asks for a pass over the VM; requests for a VM already queued
// are merged.
func (r *Reconciler) Enqueue(uid string) { r.queue.Add(uid) }

// Run queues every stored VM, then reconciles until ctx ends.
func (r *Reconciler) Run(ctx context.Context) error {
	if err := r.resync(ctx); err != nil {
		return err
	}
	var wg sync.WaitGroup
	for range r.cfg.Workers {
		wg.Go(func() {
			for r.processNext(ctx) {
			}
		})
	}
	t := time.NewTicker(r.cfg.ResyncPeriod)
	defer t.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-t.C:
			if err := r.resync(ctx); err != nil {
				r.log.Error("resync", "err", err)
			}
		}
	}
	r.queue.ShutDown()
	wg.Wait()
	r.mu.Lock()
	for _, cancel := range r.watching {
		cancel()
	}
	r.mu.Unlock()
	return nil
}

func (r *Reconciler) resync(ctx context.Context) error {
	vms, err := r.cfg.Store.List(ctx, "", nil)
	if err != nil {
		return fmt.Errorf("listing microvms: %w", err)
	}
	for _, vm := range vms {
		r.queue.Add(vm.GetSpec().GetUid())
	}
	return nil
}

func (r *Reconciler) processNext(ctx context.Context) bool {
	uid, shutdown := r.queue.Get()
	if shutdown {
		return false
	}
	defer r.queue.Done(uid)
	start := time.Now()
	retry, err := r.reconcile(ctx, uid)
	r.metrics.observe(time.Since(start), err)
	switch {
	case err != nil && ctx.Err() == nil:
		r.log.Warn("reconcile failed", "uid", uid, "err", err)
		r.queue.AddRateLimited(uid)
	case retry:
		r.queue.AddRateLimited(uid)
	default:
		r.queue.Forget(uid)
	}
	return true
}

// reconcile runs one pass. It returns retry=true (or an error) when the VM
// needs another pass after a backoff.
func (r *Reconciler) reconcile(ctx context.Context, uid string) (retry bool, err error) {
	vm, err := r.cfg.Store.Get(ctx, uid)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	log := r.log.With("uid", uid, "namespace", vm.Spec.GetNamespace(), "name", vm.Spec.GetId())
	if vm.Spec.GetDeletedAt() != nil {
		return false, r.delete(ctx, log, vm)
	}
	switch vm.GetStatus().GetState() {
	case types.MicroVMStatus_FAILED, types.MicroVMStatus_DELETING:
		return false, nil
	}
	// Stop, restart (power.go).
	vm, done, err := r.power(ctx, log, vm)
	if done || err != nil {
		return false, err
	}
	return r.create(ctx, log, vm)
}

// vmDir is the VM's own folder on the host.
func (r *Reconciler) vmDir(spec *types.MicroVMSpec) string {
	return filepath.Join(r.cfg.StateDir, "vm", spec.GetNamespace(), spec.GetId(), spec.GetUid())
}

// setStatus stores a new status for the VM, leaving the spec as it is in the
// store (the API may have marked it deleted meanwhile).
func (r *Reconciler) setStatus(ctx context.Context, uid string, fn func(st *types.MicroVMStatus)) error {
	_, err := r.cfg.Store.Update(ctx, uid, func(vm *types.MicroVM) error {
		if vm.Status == nil {
			vm.Status = &types.MicroVMStatus{}
		}
		before := proto.Clone(vm.Status)
		fn(vm.Status)
		if vm.Spec.GetDeletedAt() != nil {
			vm.Status.State = types.MicroVMStatus_DELETING
		}
		if !proto.Equal(before, vm.Status) {
			vm.Spec.UpdatedAt = timestamppb.Now()
		}
		return nil
	})
	return err
}
