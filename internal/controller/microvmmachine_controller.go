package controller

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util"
	"sigs.k8s.io/cluster-api/util/annotations"
	"sigs.k8s.io/cluster-api/util/conditions"
	"sigs.k8s.io/cluster-api/util/predicates"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	microvmv1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/hostclient"
	"github.com/liquidmetal-go/liquidmetal/internal/placement"
)

// +kubebuilder:rbac:groups=infrastructure.cluster.x-k8s.io,resources=microvmmachines,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=infrastructure.cluster.x-k8s.io,resources=microvmmachines/status;microvmmachines/finalizers,verbs=get;update;patch
// +kubebuilder:rbac:groups=cluster.x-k8s.io,resources=machines;machines/status,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Defaults of MicrovmMachineReconciler's timings.
const (
	DefaultHostGracePeriod = 10 * time.Minute
	DefaultPollInterval    = 5 * time.Second
	DefaultResyncInterval  = time.Minute
	DefaultRPCTimeout      = 10 * time.Second
)

// MicrovmStoppedReason (MicrovmReady False): the host reports the microVM
// created but stopped through its power service.
const MicrovmStoppedReason = "MicrovmStopped"

// conflictRetry is how soon a reconcile that lost an optimistic-lock write
// looks again (the winner's write usually triggers it sooner).
const conflictRetry = 250 * time.Millisecond

// bootstrapDataKey is the key of the bootstrap data in its Secret.
const bootstrapDataKey = "value"

// MicrovmMachineReconciler reconciles MicrovmMachines: it places each
// machine on a host, creates its microVM there through flintlockd's
// MicroVM API, reports the microVM's state, and deletes it with the
// machine.
//
// A machine never gets two microVMs: the host is recorded on the machine
// (HostAnnotation) and the right to call CreateMicroVM is won by an
// optimistic-lock write of the machine (CreateAttemptAnnotation) before the
// call, so of two reconciles that saw the same machine only one calls it,
// and a reconcile that sees an unexpired attempt first looks the microVM up
// by name instead of creating it. flintlockd refuses a second microVM of
// the same namespace and name (AlreadyExists), which catches the rest; the
// microVM's uid then goes into spec.providerID, again under optimistic
// locking.
//
// Each write to the API server counts (the manager's client is rate
// limited, and a hundred machines at once queue behind each other), so a
// machine whose microVM is created at once costs three writes: the claim,
// which adds the finalizer too (before any microVM exists); the provider
// ID; and one status write with every condition. A status that did not
// change is not written, and a reconcile that reads the machine from a
// cache still behind this reconciler's own writes waits for the cache.
type MicrovmMachineReconciler struct {
	Client   client.Client
	Recorder record.EventRecorder
	// Hosts is the shared connection pool to the flintlock hosts.
	Hosts *hostclient.Pool
	// WatchFilterValue, when set, limits the controller to objects with the
	// cluster.x-k8s.io/watch-filter label of this value.
	WatchFilterValue string
	// HostGracePeriod is how long a deleted machine's host may stay
	// unreachable before the machine is let go without confirming its
	// microVM's deletion; DefaultHostGracePeriod when zero.
	HostGracePeriod time.Duration
	// PollInterval is how often a microVM being created or deleted is
	// looked at; DefaultPollInterval when zero.
	PollInterval time.Duration
	// ResyncInterval is how often a running microVM is looked at;
	// DefaultResyncInterval when zero.
	ResyncInterval time.Duration
	// RPCTimeout bounds each call to a host; DefaultRPCTimeout when zero.
	RPCTimeout time.Duration

	// written remembers, per machine, the resourceVersions this
	// reconciler's own writes have superseded (see behind).
	writtenMu sync.Mutex
	written   map[client.ObjectKey]map[string]bool
}

func (r *MicrovmMachineReconciler) hostGracePeriod() time.Duration {
	return cmp.Or(r.HostGracePeriod, DefaultHostGracePeriod)
}
func (r *MicrovmMachineReconciler) pollInterval() time.Duration {
	return cmp.Or(r.PollInterval, DefaultPollInterval)
}
func (r *MicrovmMachineReconciler) resyncInterval() time.Duration {
	return cmp.Or(r.ResyncInterval, DefaultResyncInterval)
}
func (r *MicrovmMachineReconciler) rpcTimeout() time.Duration {
	return cmp.Or(r.RPCTimeout, DefaultRPCTimeout)
}

// createLease is how long a won create attempt keeps other reconciles from
// calling CreateMicroVM: longer than the call can take.
func (r *MicrovmMachineReconciler) createLease() time.Duration {
	return r.rpcTimeout() + 10*time.Second
}

// SetupWithManager registers the controller; options carry
// MaxConcurrentReconciles.
func (r *MicrovmMachineReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, options controller.Options) error {
	if r.Hosts == nil {
		return fmt.Errorf("microvmmachine controller needs a host connection pool: %w", errdefs.ErrInvalidArgument)
	}
	log := ctrl.LoggerFrom(ctx).WithValues("controller", "microvmmachine")
	scheme := mgr.GetScheme()
	clusterToMachines, err := util.ClusterToTypedObjectsMapper(mgr.GetClient(), &infrav1.MicrovmMachineList{}, scheme)
	if err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&infrav1.MicrovmMachine{}).
		WithOptions(options).
		WithEventFilter(predicates.ResourceHasFilterLabel(scheme, log, r.WatchFilterValue)).
		Watches(&clusterv1.Machine{},
			handler.EnqueueRequestsFromMapFunc(util.MachineToInfrastructureMapFunc(infrav1.GroupVersion.WithKind("MicrovmMachine")))).
		Watches(&clusterv1.Cluster{},
			handler.EnqueueRequestsFromMapFunc(clusterToMachines),
			builder.WithPredicates(predicates.ClusterPausedTransitionsOrInfrastructureProvisioned(scheme, log))).
		Named("microvmmachine").
		Complete(r)
}

// machineScope is what one reconcile works on. machine, cluster and mc
// are nil only while the MicrovmMachine is being deleted after them.
type machineScope struct {
	mm      *infrav1.MicrovmMachine
	machine *clusterv1.Machine
	cluster *clusterv1.Cluster
	mc      *infrav1.MicrovmCluster
	// server is the MicrovmMachine as the API server has it, as far as
	// this reconcile knows: as read, then as each of its writes returned
	// it. Every write is an optimistic-lock patch from it.
	server *infrav1.MicrovmMachine
	// superseded are the resourceVersions this reconcile's writes
	// replaced.
	superseded []string
	// addFinalizer: the finalizer is missing; the first write adds it.
	addFinalizer bool
	// paused: the Cluster or the machine is paused; only the Paused
	// condition is written.
	paused bool
}

func (r *MicrovmMachineReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, reterr error) {
	log := ctrl.LoggerFrom(ctx)
	mm := &infrav1.MicrovmMachine{}
	if err := r.Client.Get(ctx, req.NamespacedName, mm); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if r.behind(req.NamespacedName, mm.ResourceVersion) {
		// The cache has not seen this reconciler's last writes yet; their
		// watch events trigger the next reconcile.
		log.V(4).Info("Cached machine is older than our last write; waiting for the cache", "resourceVersion", mm.ResourceVersion)
		return ctrl.Result{}, nil
	}
	deleting := !mm.DeletionTimestamp.IsZero()
	s := &machineScope{mm: mm, server: mm.DeepCopy()}

	machine, err := util.GetOwnerMachine(ctx, r.Client, mm.ObjectMeta)
	if err != nil && !(deleting && apierrors.IsNotFound(err)) {
		return ctrl.Result{}, err
	}
	if machine == nil && !deleting {
		log.Info("Waiting for the Machine controller to set the owner reference")
		return ctrl.Result{}, nil
	}
	s.machine = machine
	clusterName := mm.Labels[clusterv1.ClusterNameLabel]
	if machine != nil {
		clusterName = machine.Spec.ClusterName
		log = log.WithValues("Machine", machine.Name)
	}
	if clusterName != "" {
		log = log.WithValues("Cluster", clusterName)
		cluster, err := util.GetClusterByName(ctx, r.Client, mm.Namespace, clusterName)
		switch {
		case err == nil:
			s.cluster = cluster
		case !(deleting && apierrors.IsNotFound(err)):
			return ctrl.Result{}, err
		}
	}
	ctx = ctrl.LoggerInto(ctx, log)
	if s.cluster == nil && !deleting {
		log.Info("Waiting for the machine's Cluster")
		return ctrl.Result{}, nil
	}

	if s.mc, err = r.microvmCluster(ctx, s.cluster); err != nil {
		return ctrl.Result{}, err
	}
	s.paused = s.cluster != nil && isPaused(s.cluster, mm)
	// The finalizer goes with the machine's first write: the claim of the
	// create attempt (so it is there before any microVM is), or else the
	// write at the end of this reconcile.
	s.addFinalizer = !deleting && !s.paused && !controllerutil.ContainsFinalizer(mm, infrav1.MachineFinalizer)

	defer func() {
		res, reterr = r.write(ctx, s, res, reterr)
		r.remember(req.NamespacedName, s.superseded)
	}()
	switch {
	case s.paused:
		return ctrl.Result{}, nil
	case deleting:
		return r.reconcileDelete(ctx, s)
	}
	return r.reconcileNormal(ctx, s)
}

// isPaused says whether the machine is paused, by its Cluster or by the
// paused annotation.
func isPaused(cluster *clusterv1.Cluster, mm *infrav1.MicrovmMachine) bool {
	return ptr.Deref(cluster.Spec.Paused, false) || annotations.HasPaused(mm)
}

// setPaused sets the Paused condition as Cluster API's contract has it.
func setPaused(cluster *clusterv1.Cluster, mm *infrav1.MicrovmMachine) {
	if !isPaused(cluster, mm) {
		conditions.Set(mm, metav1.Condition{Type: infrav1.PausedCondition, Status: metav1.ConditionFalse, Reason: clusterv1.NotPausedReason})
		return
	}
	var why []string
	if ptr.Deref(cluster.Spec.Paused, false) {
		why = append(why, "Cluster spec.paused is set to true")
	}
	if annotations.HasPaused(mm) {
		why = append(why, "MicrovmMachine has the "+clusterv1.PausedAnnotation+" annotation")
	}
	conditions.Set(mm, metav1.Condition{Type: infrav1.PausedCondition, Status: metav1.ConditionTrue,
		Reason: clusterv1.PausedReason, Message: strings.Join(why, ", ")})
}

// behind says whether rv is one this reconciler's own writes replaced:
// the cache has not caught up with them yet.
func (r *MicrovmMachineReconciler) behind(key client.ObjectKey, rv string) bool {
	r.writtenMu.Lock()
	defer r.writtenMu.Unlock()
	return r.written[key][rv]
}

// remember records the resourceVersions a reconcile's writes replaced,
// instead of the ones recorded before (which the cache had passed when
// that reconcile read the machine).
func (r *MicrovmMachineReconciler) remember(key client.ObjectKey, superseded []string) {
	if len(superseded) == 0 {
		return
	}
	r.writtenMu.Lock()
	defer r.writtenMu.Unlock()
	if r.written == nil {
		r.written = map[client.ObjectKey]map[string]bool{}
	}
	set := make(map[string]bool, len(superseded))
	for _, rv := range superseded {
		set[rv] = true
	}
	r.written[key] = set
}

func (r *MicrovmMachineReconciler) forget(key client.ObjectKey) {
	r.writtenMu.Lock()
	defer r.writtenMu.Unlock()
	delete(r.written, key)
}

// microvmCluster returns the cluster's MicrovmCluster, or nil when the
// Cluster's infrastructure is not (or no longer) one.
func (r *MicrovmMachineReconciler) microvmCluster(ctx context.Context, cluster *clusterv1.Cluster) (*infrav1.MicrovmCluster, error) {
	if cluster == nil {
		return nil, nil
	}
	ref := cluster.Spec.InfrastructureRef
	if ref.Kind != "MicrovmCluster" || ref.APIGroup != infrav1.GroupVersion.Group || ref.Name == "" {
		return nil, nil
	}
	mc := &infrav1.MicrovmCluster{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: cluster.Namespace, Name: ref.Name}, mc); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	return mc, nil
}

// write ends a reconcile: it sets the Paused and summary Ready conditions
// and writes what changed, the status in one write and the finalizers in
// another, each under optimistic locking: an added finalizer first, a
// removed one last (removing the last finalizer of a deleted machine
// removes the machine, whose status is then not written at all). A write that finds the machine changed by
// someone else retries the reconcile shortly.
func (r *MicrovmMachineReconciler) write(ctx context.Context, s *machineScope, res ctrl.Result, reterr error) (ctrl.Result, error) {
	mm := s.mm
	if s.cluster != nil {
		setPaused(s.cluster, mm)
	}
	switch {
	case s.paused:
	case !mm.DeletionTimestamp.IsZero():
		conditions.Set(mm, metav1.Condition{
			Type:    infrav1.ReadyCondition,
			Status:  metav1.ConditionFalse,
			Reason:  infrav1.DeletingReason,
			Message: conditions.GetMessage(mm, infrav1.MicrovmReadyCondition),
		})
	default:
		if err := conditions.SetSummaryCondition(mm, mm, infrav1.ReadyCondition,
			conditions.ForConditionTypes{infrav1.MicrovmReadyCondition}); err != nil {
			return res, kerrors.NewAggregate([]error{reterr, err})
		}
	}
	// Conditions set before a spec write of this reconcile observed the
	// generation before it.
	for i := range mm.Status.Conditions {
		mm.Status.Conditions[i].ObservedGeneration = mm.Generation
	}
	if s.addFinalizer {
		controllerutil.AddFinalizer(mm, infrav1.MachineFinalizer)
	}
	gone := !mm.DeletionTimestamp.IsZero() && len(mm.Finalizers) == 0

	var errs []error
	writeStatus := func() {
		if gone || equality.Semantic.DeepEqual(mm.Status, s.server.Status) {
			return
		}
		err := r.casWrite(ctx, s, true, func(m *infrav1.MicrovmMachine) { m.Status = *mm.Status.DeepCopy() })
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("write status: %w", err))
		}
	}
	writeFinalizers := func() {
		if len(errs) > 0 || slices.Equal(mm.Finalizers, s.server.Finalizers) {
			return
		}
		err := r.casWrite(ctx, s, false, func(m *infrav1.MicrovmMachine) { m.Finalizers = slices.Clone(mm.Finalizers) })
		if err != nil && !(gone && apierrors.IsNotFound(err)) {
			errs = append(errs, fmt.Errorf("write finalizers: %w", err))
		}
	}
	// An added finalizer goes first, so that no status is ever seen on a
	// machine that could still go without it.
	if s.addFinalizer {
		writeFinalizers()
		if len(errs) == 0 {
			writeStatus()
		}
	} else {
		writeStatus()
		writeFinalizers()
	}
	if err := errors.Join(errs...); err != nil {
		if apierrors.IsConflict(errs[0]) && reterr == nil {
			ctrl.LoggerFrom(ctx).V(2).Info("The machine changed meanwhile; reconciling again", "error", err.Error())
			if res.RequeueAfter == 0 || res.RequeueAfter > conflictRetry {
				res.RequeueAfter = conflictRetry
			}
			return res, nil
		}
		return res, kerrors.NewAggregate([]error{reterr, err})
	}
	return res, reterr
}

func (r *MicrovmMachineReconciler) reconcileNormal(ctx context.Context, s *machineScope) (ctrl.Result, error) {
	mm := s.mm
	if mm.Status.FailureReason != nil {
		// Terminal: the Machine has to be replaced.
		return ctrl.Result{}, nil
	}
	if mm.Spec.ProviderID != "" {
		return r.observe(ctx, s)
	}
	if s.mc == nil || !ptr.Deref(s.cluster.Status.Initialization.InfrastructureProvisioned, false) {
		setMicrovmReady(mm, metav1.ConditionFalse, infrav1.WaitingForClusterInfrastructureReadyReason,
			"Waiting for the cluster infrastructure (MicrovmCluster) to be provisioned")
		return ctrl.Result{}, nil
	}
	if s.machine.Spec.Bootstrap.DataSecretName == nil {
		setMicrovmReady(mm, metav1.ConditionFalse, infrav1.WaitingForBootstrapDataReason,
			"Waiting for the Machine's bootstrap data secret")
		return ctrl.Result{}, nil
	}
	return r.create(ctx, s)
}

// create places the machine (once), wins the create attempt and asks the
// host for the microVM.
func (r *MicrovmMachineReconciler) create(ctx context.Context, s *machineScope) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	mm := s.mm
	host := mm.Annotations[HostAnnotation]
	if host != "" {
		// An earlier attempt chose the host and may have created the
		// microVM without recording it.
		vm, err := r.findVM(ctx, s, host)
		if err != nil {
			return r.hostError(mm, host, err, metav1.ConditionFalse, infrav1.MicrovmCreateFailedReason)
		}
		if vm != nil {
			return r.adopt(ctx, s, host, vm)
		}
		if wait := r.leaseLeft(mm); wait > 0 {
			setMicrovmReady(mm, metav1.ConditionFalse, infrav1.MicrovmPendingReason,
				"Another reconcile is creating the microVM on host "+host)
			return ctrl.Result{RequeueAfter: min(wait, r.pollInterval())}, nil
		}
	} else {
		var err error
		if host, err = r.place(ctx, s); err != nil {
			setMicrovmReady(mm, metav1.ConditionFalse, infrav1.PlacementFailedReason, err.Error())
			if errors.Is(err, placement.ErrNoHost) {
				r.event(mm, corev1.EventTypeWarning, "PlacementFailed", err.Error())
				return ctrl.Result{RequeueAfter: 30 * time.Second}, nil
			}
			return ctrl.Result{}, err
		}
	}

	if err := r.claim(ctx, s, host); err != nil {
		if apierrors.IsConflict(err) {
			// Another reconcile changed the machine first: look again.
			log.V(2).Info("Lost the create attempt to another reconcile", "host", host)
			return ctrl.Result{RequeueAfter: conflictRetry}, nil
		}
		return ctrl.Result{}, fmt.Errorf("record the create attempt: %w", err)
	}

	spec, err := r.spec(ctx, s, host)
	if err != nil {
		r.release(ctx, s)
		if errdefs.IsInvalidArgument(err) {
			r.fail(mm, infrav1.FailureReasonInvalidConfiguration, infrav1.InvalidConfigurationReason, err.Error())
			return ctrl.Result{}, nil
		}
		setMicrovmReady(mm, metav1.ConditionFalse, infrav1.MicrovmCreateFailedReason, err.Error())
		return ctrl.Result{}, err
	}
	creds, err := credentials(ctx, r.Client, s.mc, host)
	if err != nil {
		r.release(ctx, s)
		setMicrovmReady(mm, metav1.ConditionFalse, infrav1.MicrovmCreateFailedReason, err.Error())
		return ctrl.Result{}, err
	}
	cl, err := r.Hosts.MicroVM(host, creds)
	if err != nil {
		r.release(ctx, s)
		setMicrovmReady(mm, metav1.ConditionFalse, infrav1.MicrovmCreateFailedReason, err.Error())
		return ctrl.Result{}, err
	}
	callCtx, cancel := context.WithTimeout(ctx, r.rpcTimeout())
	resp, err := cl.CreateMicroVM(callCtx, &microvmv1.CreateMicroVMRequest{Microvm: spec})
	cancel()
	var vm *types.MicroVM
	switch code := status.Code(err); {
	case err == nil:
		vm = resp.GetMicrovm()
	case code == codes.AlreadyExists:
		if vm, err = r.findVM(ctx, s, host); err != nil {
			return r.hostError(mm, host, err, metav1.ConditionFalse, infrav1.MicrovmCreateFailedReason)
		}
		if vm == nil {
			r.fail(mm, infrav1.FailureReasonCreateError, infrav1.InvalidConfigurationReason, fmt.Sprintf(
				"Host %s already has a microVM %s/%s that does not belong to this machine", host, mm.Namespace, mm.Name))
			return ctrl.Result{}, nil
		}
	case code == codes.InvalidArgument:
		r.release(ctx, s)
		r.fail(mm, infrav1.FailureReasonInvalidConfiguration, infrav1.InvalidConfigurationReason,
			fmt.Sprintf("Host %s refused the microVM: %s", host, status.Convert(err).Message()))
		return ctrl.Result{}, nil
	default:
		if code == codes.Unauthenticated || code == codes.PermissionDenied || code == codes.FailedPrecondition ||
			code == codes.Unimplemented || code == codes.ResourceExhausted {
			// The host surely created nothing: retry without waiting out
			// the lease.
			r.release(ctx, s)
		}
		return r.hostError(mm, host, fmt.Errorf("create microVM: %w", err), metav1.ConditionFalse, infrav1.MicrovmCreateFailedReason)
	}
	return r.adopt(ctx, s, host, vm)
}

// adopt records the microVM in spec.providerID and reports its state.
func (r *MicrovmMachineReconciler) adopt(ctx context.Context, s *machineScope, host string, vm *types.MicroVM) (ctrl.Result, error) {
	uid := vm.GetSpec().GetUid()
	if uid == "" {
		return ctrl.Result{}, fmt.Errorf("host %s returned a microVM without uid", host)
	}
	id := ProviderID(host, uid)
	if err := r.casPatch(ctx, s, func(m *infrav1.MicrovmMachine) {
		m.Spec.ProviderID = id
		delete(m.Annotations, CreateAttemptAnnotation)
	}); err != nil {
		if apierrors.IsConflict(err) {
			// The microVM is found by name on the next reconcile.
			return ctrl.Result{RequeueAfter: conflictRetry}, nil
		}
		return ctrl.Result{}, fmt.Errorf("record provider ID %s: %w", id, err)
	}
	ctrl.LoggerFrom(ctx).Info("MicroVM requested", "host", host, "uid", uid)
	r.event(s.mm, corev1.EventTypeNormal, "MicrovmCreated", fmt.Sprintf("MicroVM %s requested on host %s", uid, host))
	setHostReachable(s.mm, host, nil)
	return r.apply(s.mm, host, vm), nil
}

// observe reads the machine's microVM from its host.
func (r *MicrovmMachineReconciler) observe(ctx context.Context, s *machineScope) (ctrl.Result, error) {
	mm := s.mm
	host, uid, err := ParseProviderID(mm.Spec.ProviderID)
	if err != nil {
		r.fail(mm, infrav1.FailureReasonInvalidConfiguration, infrav1.InvalidConfigurationReason, err.Error())
		return ctrl.Result{}, nil
	}
	vm, err := r.getVM(ctx, s, host, uid)
	switch {
	case status.Code(err) == codes.NotFound:
		setHostReachable(mm, host, nil)
		mm.Status.VMState = ptr.To(infrav1.VMStateDeleted)
		r.fail(mm, infrav1.FailureReasonUpdateError, infrav1.MicrovmDeletedReason,
			fmt.Sprintf("MicroVM %s is gone from host %s", uid, host))
		return ctrl.Result{}, nil
	case err != nil:
		return r.hostError(mm, host, err, metav1.ConditionUnknown, infrav1.MicrovmUnknownStateReason)
	}
	setHostReachable(mm, host, nil)
	return r.apply(mm, host, vm), nil
}

// apply maps the microVM's flintlock state onto the machine's status.
func (r *MicrovmMachineReconciler) apply(mm *infrav1.MicrovmMachine, host string, vm *types.MicroVM) ctrl.Result {
	st := vm.GetStatus()
	mm.Status.Addresses = machineAddresses(mm, host)
	state := st.GetState()
	if d := st.GetDetailedState(); state == types.MicroVMStatus_CREATED &&
		(d == types.MicroVMStatus_RUNNING || d == types.MicroVMStatus_STOPPED) {
		// Hosts with the power service tell a running VM from a stopped one.
		state = d
	}
	switch state {
	case types.MicroVMStatus_PENDING:
		mm.Status.VMState = ptr.To(infrav1.VMStatePending)
		mm.Status.Ready = false
		msg := "Host " + host + " is creating the microVM"
		if st.GetRetry() > 0 {
			msg += fmt.Sprintf(" (retry %d: %s)", st.GetRetry(), st.GetFailureMessage())
		}
		setMicrovmReady(mm, metav1.ConditionFalse, infrav1.MicrovmPendingReason, msg)
		return ctrl.Result{RequeueAfter: r.pollInterval()}
	case types.MicroVMStatus_CREATED, types.MicroVMStatus_RUNNING:
		mm.Status.VMState = ptr.To(infrav1.VMStateRunning)
		mm.Status.Ready = true
		mm.Status.Initialization.Provisioned = ptr.To(true)
		setMicrovmReady(mm, metav1.ConditionTrue, infrav1.MicrovmRunningReason, "")
		return ctrl.Result{RequeueAfter: r.resyncInterval()}
	case types.MicroVMStatus_FAILED:
		mm.Status.VMState = ptr.To(infrav1.VMStateFailed)
		reason := infrav1.FailureReasonCreateError
		if ptr.Deref(mm.Status.Initialization.Provisioned, false) {
			reason = infrav1.FailureReasonUpdateError
		}
		msg := fmt.Sprintf("Host %s reports the microVM failed", host)
		if st.GetFailureReason() != "" || st.GetFailureMessage() != "" {
			msg += fmt.Sprintf(": %s: %s", st.GetFailureReason(), st.GetFailureMessage())
		}
		r.fail(mm, reason, infrav1.MicrovmFailedReason, msg)
		return ctrl.Result{}
	case types.MicroVMStatus_STOPPED:
		// The vmState enum has no "stopped": the condition says it.
		mm.Status.VMState = ptr.To(infrav1.VMStateUnknown)
		mm.Status.Ready = false
		setMicrovmReady(mm, metav1.ConditionFalse, MicrovmStoppedReason,
			"The microVM is stopped on host "+host+" (power service); it keeps its files")
		return ctrl.Result{RequeueAfter: r.resyncInterval()}
	case types.MicroVMStatus_DELETING:
		mm.Status.VMState = ptr.To(infrav1.VMStateDeleted)
		mm.Status.Ready = false
		setMicrovmReady(mm, metav1.ConditionFalse, infrav1.MicrovmDeletedReason, "Host "+host+" is deleting the microVM")
		return ctrl.Result{RequeueAfter: r.pollInterval()}
	default:
		mm.Status.VMState = ptr.To(infrav1.VMStateUnknown)
		mm.Status.Ready = false
		setMicrovmReady(mm, metav1.ConditionUnknown, infrav1.MicrovmUnknownStateReason,
			fmt.Sprintf("Host %s reports the unknown state %s", host, st.GetState()))
		return ctrl.Result{RequeueAfter: r.pollInterval()}
	}
}

// reconcileDelete deletes the microVM and lets the machine go once the
// host no longer has it, once it never had one, or once the host has been
// unreachable for the grace period.
func (r *MicrovmMachineReconciler) reconcileDelete(ctx context.Context, s *machineScope) (ctrl.Result, error) {
	mm := s.mm
	setMicrovmReady(mm, metav1.ConditionFalse, infrav1.MicrovmDeletingReason, "Deleting the microVM")
	host, uid, err := ParseProviderID(mm.Spec.ProviderID)
	if err != nil {
		host, uid = mm.Annotations[HostAnnotation], ""
	}
	if host == "" {
		// Never placed, so never created.
		r.done(ctx, mm, "The machine never had a microVM")
		return ctrl.Result{}, nil
	}
	if uid == "" {
		vm, err := r.findVM(ctx, s, host)
		if err != nil {
			return r.deleteUnreachable(ctx, mm, host, err)
		}
		if vm == nil {
			if wait := r.leaseLeft(mm); wait > 0 {
				// A create call may still be on its way.
				return ctrl.Result{RequeueAfter: wait}, nil
			}
			setHostReachable(mm, host, nil)
			r.done(ctx, mm, "The machine's microVM was never created")
			return ctrl.Result{}, nil
		}
		uid = vm.GetSpec().GetUid()
	}

	vm, err := r.getVM(ctx, s, host, uid)
	switch {
	case status.Code(err) == codes.NotFound:
		setHostReachable(mm, host, nil)
		r.done(ctx, mm, fmt.Sprintf("MicroVM %s is gone from host %s", uid, host))
		return ctrl.Result{}, nil
	case err != nil:
		return r.deleteUnreachable(ctx, mm, host, err)
	}
	setHostReachable(mm, host, nil)
	mm.Status.VMState = ptr.To(infrav1.VMStateDeleted)
	mm.Status.Ready = false
	if vm.GetStatus().GetState() != types.MicroVMStatus_DELETING {
		creds, err := credentials(ctx, r.Client, s.mc, host)
		if err != nil {
			return ctrl.Result{}, err
		}
		cl, err := r.Hosts.MicroVM(host, creds)
		if err != nil {
			return ctrl.Result{}, err
		}
		callCtx, cancel := context.WithTimeout(ctx, r.rpcTimeout())
		_, err = cl.DeleteMicroVM(callCtx, &microvmv1.DeleteMicroVMRequest{Uid: uid})
		cancel()
		switch {
		case status.Code(err) == codes.NotFound:
			r.done(ctx, mm, fmt.Sprintf("MicroVM %s is gone from host %s", uid, host))
			return ctrl.Result{}, nil
		case err != nil:
			return r.deleteUnreachable(ctx, mm, host, fmt.Errorf("delete microVM: %w", err))
		}
		r.event(mm, corev1.EventTypeNormal, "MicrovmDeleting", fmt.Sprintf("Deleting microVM %s on host %s", uid, host))
	}
	setMicrovmReady(mm, metav1.ConditionFalse, infrav1.MicrovmDeletingReason,
		fmt.Sprintf("Waiting for host %s to remove microVM %s", host, uid))
	return ctrl.Result{RequeueAfter: r.pollInterval()}, nil
}

// deleteUnreachable handles a failed call while deleting: past the grace
// period of an unreachable host the machine is let go, with a warning.
func (r *MicrovmMachineReconciler) deleteUnreachable(ctx context.Context, mm *infrav1.MicrovmMachine, host string, err error) (ctrl.Result, error) {
	if !unreachable(err) {
		setMicrovmReady(mm, metav1.ConditionFalse, infrav1.MicrovmDeletingReason, "Deleting the microVM: "+err.Error())
		return ctrl.Result{}, err
	}
	setHostReachable(mm, host, err)
	since := time.Now()
	if t := conditions.GetLastTransitionTime(mm, infrav1.HostReachableCondition); t != nil {
		since = t.Time
	}
	grace := r.hostGracePeriod()
	down := time.Since(since)
	if down < grace {
		setMicrovmReady(mm, metav1.ConditionFalse, infrav1.MicrovmDeletingReason, fmt.Sprintf(
			"Host %s is unreachable; the machine is let go if it stays so for %s", host, (grace-down).Round(time.Second)))
		return ctrl.Result{RequeueAfter: min(r.pollInterval(), grace-down)}, nil
	}
	msg := fmt.Sprintf("Host %s has been unreachable for %s (grace period %s): the machine is deleted without confirming its microVM's deletion; remove the microVM from the host by hand",
		host, down.Round(time.Second), grace)
	ctrl.LoggerFrom(ctx).Info("Abandoning the microVM", "host", host, "reason", msg)
	r.event(mm, corev1.EventTypeWarning, "MicrovmAbandoned", msg)
	setMicrovmReady(mm, metav1.ConditionFalse, infrav1.MicrovmAbandonedReason, msg)
	controllerutil.RemoveFinalizer(mm, infrav1.MachineFinalizer)
	return ctrl.Result{}, nil
}

// done lets a deleted machine go.
func (r *MicrovmMachineReconciler) done(ctx context.Context, mm *infrav1.MicrovmMachine, msg string) {
	ctrl.LoggerFrom(ctx).Info("MicroVM deleted", "reason", msg)
	mm.Status.VMState = ptr.To(infrav1.VMStateDeleted)
	mm.Status.Ready = false
	setMicrovmReady(mm, metav1.ConditionFalse, infrav1.MicrovmDeletedReason, msg)
	controllerutil.RemoveFinalizer(mm, infrav1.MachineFinalizer)
}

// place chooses the machine's host.
func (r *MicrovmMachineReconciler) place(ctx context.Context, s *machineScope) (string, error) {
	pool := hostPool(s.mc)
	if pool == nil || len(pool.Hosts) == 0 {
		return "", fmt.Errorf("%w: MicrovmCluster %s has no hosts", placement.ErrNoHost, s.mc.Name)
	}
	hosts := make([]placement.Host, 0, len(pool.Hosts))
	for _, h := range pool.Hosts {
		hosts = append(hosts, placement.Host{Endpoint: h.Endpoint, ControlPlaneAllowed: h.AllowsControlPlane()})
	}
	mm := s.mm
	req := placement.Request{
		Machine:       mm.Name,
		ControlPlane:  util.IsControlPlaneMachine(s.machine),
		FailureDomain: s.machine.Spec.FailureDomain,
		VCPU:          int64(mm.Spec.VCPU),
		MemoryMiB:     int64(mm.Spec.MemoryMb),
	}
	var machines infrav1.MicrovmMachineList
	if err := r.Client.List(ctx, &machines, client.InNamespace(mm.Namespace),
		client.MatchingLabels{clusterv1.ClusterNameLabel: s.cluster.Name}); err != nil {
		return "", err
	}
	group := groupOf(s.machine.Labels)
	for i := range machines.Items {
		o := &machines.Items[i]
		h := hostOf(o)
		if o.Name == mm.Name {
			continue
		}
		if h == "" {
			if groupOf(o.Labels) == group && o.DeletionTimestamp.IsZero() {
				req.Unplaced = append(req.Unplaced, o.Name)
			}
			continue
		}
		if groupOf(o.Labels) == group {
			req.Peers = append(req.Peers, h)
		}
		if o.Spec.ProviderID == "" && o.Status.FailureReason == nil {
			req.Pending = append(req.Pending, placement.Reservation{Host: h, VCPU: int64(o.Spec.VCPU), MemoryMiB: int64(o.Spec.MemoryMb)})
		}
	}
	if s.mc.Spec.Placement.DynamicPool != nil {
		return placement.Dynamic(ctx, hosts, req, capacityReader{r: r, c: r.Client, mc: s.mc})
	}
	return placement.Static(hosts, req)
}

// groupOf is the placement group of a machine: its MachineDeployment, the
// control plane, its MachineSet, or else the whole cluster.
func groupOf(labels map[string]string) string {
	if v, ok := labels[clusterv1.MachineDeploymentNameLabel]; ok {
		return "deployment/" + v
	}
	if _, ok := labels[clusterv1.MachineControlPlaneLabel]; ok {
		return "control-plane"
	}
	if v, ok := labels[clusterv1.MachineSetNameLabel]; ok {
		return "set/" + v
	}
	return ""
}

// hostOf is the host a machine is placed on, if any.
func hostOf(m *infrav1.MicrovmMachine) string {
	if h, _, err := ParseProviderID(m.Spec.ProviderID); err == nil {
		return h
	}
	return m.Annotations[HostAnnotation]
}

// claim wins the right to call CreateMicroVM: it records the host and the
// attempt's time with an optimistic-lock patch from the state this
// reconcile read, so it fails with a conflict when anyone changed the
// machine meanwhile.
func (r *MicrovmMachineReconciler) claim(ctx context.Context, s *machineScope, host string) error {
	return r.casPatch(ctx, s, func(m *infrav1.MicrovmMachine) {
		if m.Annotations == nil {
			m.Annotations = map[string]string{}
		}
		m.Annotations[HostAnnotation] = host
		m.Annotations[CreateAttemptAnnotation] = time.Now().UTC().Format(time.RFC3339Nano)
	})
}

// release ends this reconcile's create attempt early, when the host
// surely created nothing, so that a retry need not wait out the lease.
func (r *MicrovmMachineReconciler) release(ctx context.Context, s *machineScope) {
	if err := r.casPatch(ctx, s, func(m *infrav1.MicrovmMachine) {
		delete(m.Annotations, CreateAttemptAnnotation)
	}); err != nil {
		ctrl.LoggerFrom(ctx).V(2).Info("Could not release the create attempt; it expires", "error", err.Error())
	}
}

// leaseLeft is how long the machine's last create attempt still holds.
func (r *MicrovmMachineReconciler) leaseLeft(mm *infrav1.MicrovmMachine) time.Duration {
	t, err := time.Parse(time.RFC3339Nano, mm.Annotations[CreateAttemptAnnotation])
	if err != nil {
		return 0
	}
	return max(time.Until(t.Add(r.createLease())), 0)
}

// casPatch changes metadata or spec of the machine with an optimistic-lock
// patch from the machine as this reconcile last knew it on the server (so
// it fails with a conflict when anyone else changed it since), and applies
// the change to the object in memory too. A missing finalizer is added by
// the same write.
func (r *MicrovmMachineReconciler) casPatch(ctx context.Context, s *machineScope, change func(*infrav1.MicrovmMachine)) error {
	add := s.addFinalizer
	err := r.casWrite(ctx, s, false, func(m *infrav1.MicrovmMachine) {
		change(m)
		if add {
			controllerutil.AddFinalizer(m, infrav1.MachineFinalizer)
		}
	})
	if err != nil {
		return err
	}
	change(s.mm)
	if add {
		controllerutil.AddFinalizer(s.mm, infrav1.MachineFinalizer)
		s.addFinalizer = false
	}
	// A spec change moves the generation, which conditions observe.
	s.mm.Generation = s.server.Generation
	return nil
}

// casWrite writes change to the machine, or to its status subresource,
// as one JSON merge patch from s.server carrying its resourceVersion, and
// keeps what the server returns as the new s.server.
func (r *MicrovmMachineReconciler) casWrite(ctx context.Context, s *machineScope, status bool, change func(*infrav1.MicrovmMachine)) error {
	base := s.server.DeepCopy()
	obj := base.DeepCopy()
	change(obj)
	p := client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})
	var err error
	if status {
		err = r.Client.Status().Patch(ctx, obj, p)
	} else {
		err = r.Client.Patch(ctx, obj, p)
	}
	if err != nil {
		return err
	}
	s.superseded = append(s.superseded, s.server.ResourceVersion)
	s.server = obj
	return nil
}

// findVM looks the machine's microVM up on host by namespace and name,
// and returns it only when it carries the machine's uid label.
func (r *MicrovmMachineReconciler) findVM(ctx context.Context, s *machineScope, host string) (*types.MicroVM, error) {
	creds, err := credentials(ctx, r.Client, s.mc, host)
	if err != nil {
		return nil, err
	}
	cl, err := r.Hosts.MicroVM(host, creds)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, r.rpcTimeout())
	defer cancel()
	resp, err := cl.ListMicroVMs(ctx, &microvmv1.ListMicroVMsRequest{Namespace: s.mm.Namespace, Name: ptr.To(s.mm.Name)})
	if err != nil {
		return nil, fmt.Errorf("list microVMs: %w", err)
	}
	for _, vm := range resp.GetMicrovm() {
		spec := vm.GetSpec()
		if spec.GetNamespace() == s.mm.Namespace && spec.GetId() == s.mm.Name && spec.GetLabels()[MachineUIDLabel] == string(s.mm.UID) {
			return vm, nil
		}
	}
	return nil, nil
}

func (r *MicrovmMachineReconciler) getVM(ctx context.Context, s *machineScope, host, uid string) (*types.MicroVM, error) {
	creds, err := credentials(ctx, r.Client, s.mc, host)
	if err != nil {
		return nil, err
	}
	cl, err := r.Hosts.MicroVM(host, creds)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, r.rpcTimeout())
	defer cancel()
	resp, err := cl.GetMicroVM(ctx, &microvmv1.GetMicroVMRequest{Uid: uid})
	if err != nil {
		return nil, fmt.Errorf("get microVM %s: %w", uid, err)
	}
	return resp.GetMicrovm(), nil
}

// spec builds the create request's microVM from the machine and its
// bootstrap data.
func (r *MicrovmMachineReconciler) spec(ctx context.Context, s *machineScope, host string) (*types.MicroVMSpec, error) {
	mm := s.mm
	name := ptr.Deref(s.machine.Spec.Bootstrap.DataSecretName, "")
	sec, err := secret(ctx, r.Client, mm.Namespace, name)
	if err != nil {
		return nil, fmt.Errorf("bootstrap data: %w", err)
	}
	data, ok := sec.Data[bootstrapDataKey]
	if !ok {
		return nil, fmt.Errorf("bootstrap data secret %s/%s has no key %q: %w", mm.Namespace, name, bootstrapDataKey, errdefs.ErrInvalidArgument)
	}
	if f := string(sec.Data["format"]); f != "" && f != "cloud-config" {
		return nil, fmt.Errorf("bootstrap data format %q is not supported (only cloud-config): %w", f, errdefs.ErrInvalidArgument)
	}
	keys := mm.Spec.SSHPublicKeys
	if len(keys) == 0 {
		keys = s.mc.Spec.SSHPublicKeys
	}
	return microvmSpec(vmInput{machine: mm, clusterName: s.cluster.Name, host: host, sshKeys: keys, userData: data})
}

// hostError reports a failed call to a host in the machine's conditions;
// an unreachable host is polled rather than backed off.
func (r *MicrovmMachineReconciler) hostError(mm *infrav1.MicrovmMachine, host string, err error,
	st metav1.ConditionStatus, reason string) (ctrl.Result, error) {
	setMicrovmReady(mm, st, reason, err.Error())
	if unreachable(err) {
		setHostReachable(mm, host, err)
		return ctrl.Result{RequeueAfter: r.pollInterval()}, nil
	}
	return ctrl.Result{}, err
}

// fail records a terminal failure.
func (r *MicrovmMachineReconciler) fail(mm *infrav1.MicrovmMachine, failureReason, conditionReason, msg string) {
	mm.Status.FailureReason = ptr.To(failureReason)
	mm.Status.FailureMessage = ptr.To(msg)
	mm.Status.Ready = false
	if mm.Status.VMState == nil || *mm.Status.VMState != infrav1.VMStateDeleted {
		mm.Status.VMState = ptr.To(infrav1.VMStateFailed)
	}
	setMicrovmReady(mm, metav1.ConditionFalse, conditionReason, msg)
	r.event(mm, corev1.EventTypeWarning, conditionReason, msg)
}

func (r *MicrovmMachineReconciler) event(mm *infrav1.MicrovmMachine, eventType, reason, msg string) {
	if r.Recorder != nil {
		r.Recorder.Event(mm, eventType, reason, msg)
	}
}

func setMicrovmReady(mm *infrav1.MicrovmMachine, st metav1.ConditionStatus, reason, msg string) {
	conditions.Set(mm, metav1.Condition{Type: infrav1.MicrovmReadyCondition, Status: st, Reason: reason, Message: msg})
}

// setHostReachable records whether the last call to host got an answer.
func setHostReachable(mm *infrav1.MicrovmMachine, host string, err error) {
	if err == nil {
		conditions.Set(mm, metav1.Condition{Type: infrav1.HostReachableCondition, Status: metav1.ConditionTrue,
			Reason: infrav1.HostReachableReason, Message: "Host " + host + " answers"})
		return
	}
	conditions.Set(mm, metav1.Condition{Type: infrav1.HostReachableCondition, Status: metav1.ConditionFalse,
		Reason: infrav1.HostUnreachableReason, Message: fmt.Sprintf("Host %s: %v", host, err)})
}
