package controller

import (
	"cmp"
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/utils/ptr"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util"
	"sigs.k8s.io/cluster-api/util/conditions"
	"sigs.k8s.io/cluster-api/util/finalizers"
	"sigs.k8s.io/cluster-api/util/patch"
	"sigs.k8s.io/cluster-api/util/paused"
	"sigs.k8s.io/cluster-api/util/predicates"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
)

// +kubebuilder:rbac:groups=infrastructure.cluster.x-k8s.io,resources=microvmclusters,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=infrastructure.cluster.x-k8s.io,resources=microvmclusters/status;microvmclusters/finalizers,verbs=get;update;patch
// +kubebuilder:rbac:groups=cluster.x-k8s.io,resources=clusters;clusters/status,verbs=get;list;watch

// MicrovmClusterReconciler reconciles MicrovmClusters: it reports the
// cluster infrastructure provisioned once the control-plane endpoint is
// known, publishes one failure domain per host, and checks whether the
// endpoint answers.
type MicrovmClusterReconciler struct {
	Client client.Client
	// WatchFilterValue, when set, limits the controller to objects with the
	// cluster.x-k8s.io/watch-filter label of this value.
	WatchFilterValue string
	// EndpointDialTimeout bounds the TCP dial of the endpoint check; 2 s
	// when zero.
	EndpointDialTimeout time.Duration
	// EndpointCheckInterval is how often the endpoint is checked again; 30 s
	// when zero.
	EndpointCheckInterval time.Duration
}

// SetupWithManager registers the controller; options carry
// MaxConcurrentReconciles.
func (r *MicrovmClusterReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, options controller.Options) error {
	log := ctrl.LoggerFrom(ctx).WithValues("controller", "microvmcluster")
	scheme := mgr.GetScheme()
	return ctrl.NewControllerManagedBy(mgr).
		For(&infrav1.MicrovmCluster{}).
		WithOptions(options).
		WithEventFilter(predicates.ResourceHasFilterLabel(scheme, log, r.WatchFilterValue)).
		Watches(&clusterv1.Cluster{},
			handler.EnqueueRequestsFromMapFunc(util.ClusterToInfrastructureMapFunc(ctx,
				infrav1.GroupVersion.WithKind("MicrovmCluster"), mgr.GetClient(), &infrav1.MicrovmCluster{})),
			builder.WithPredicates(predicate.Or[client.Object](
				predicates.ClusterPausedTransitions(scheme, log),
				endpointChanged{},
			)),
		).
		// A deleted MicrovmCluster waits for its machines: their deletion
		// wakes it.
		Watches(&infrav1.MicrovmMachine{},
			handler.EnqueueRequestsFromMapFunc(r.machineToCluster),
			builder.WithPredicates(predicate.Funcs{
				CreateFunc:  func(event.CreateEvent) bool { return false },
				UpdateFunc:  func(event.UpdateEvent) bool { return false },
				DeleteFunc:  func(event.DeleteEvent) bool { return true },
				GenericFunc: func(event.GenericEvent) bool { return false },
			})).
		Named("microvmcluster").
		Complete(r)
}

// endpointChanged passes Cluster updates that change the control-plane
// endpoint: a MicrovmCluster without its own endpoint uses the Cluster's.
type endpointChanged struct{ predicate.Funcs }

func (endpointChanged) Update(e event.UpdateEvent) bool {
	o, ok1 := e.ObjectOld.(*clusterv1.Cluster)
	n, ok2 := e.ObjectNew.(*clusterv1.Cluster)
	return ok1 && ok2 && o.Spec.ControlPlaneEndpoint != n.Spec.ControlPlaneEndpoint
}

// machineToCluster maps a MicrovmMachine to its cluster's MicrovmCluster.
func (r *MicrovmClusterReconciler) machineToCluster(ctx context.Context, o client.Object) []reconcile.Request {
	name := o.GetLabels()[clusterv1.ClusterNameLabel]
	if name == "" {
		return nil
	}
	cluster, err := util.GetClusterByName(ctx, r.Client, o.GetNamespace(), name)
	if err != nil {
		return nil
	}
	ref := cluster.Spec.InfrastructureRef
	if ref.Kind != "MicrovmCluster" || ref.APIGroup != infrav1.GroupVersion.Group || ref.Name == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: cluster.Namespace, Name: ref.Name}}}
}

func (r *MicrovmClusterReconciler) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, reterr error) {
	log := ctrl.LoggerFrom(ctx)
	mc := &infrav1.MicrovmCluster{}
	if err := r.Client.Get(ctx, req.NamespacedName, mc); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}

	cluster, err := util.GetOwnerCluster(ctx, r.Client, mc.ObjectMeta)
	if err != nil && !(apierrors.IsNotFound(err) && !mc.DeletionTimestamp.IsZero()) {
		return ctrl.Result{}, err
	}
	if cluster == nil && mc.DeletionTimestamp.IsZero() {
		log.Info("Waiting for the Cluster controller to set the owner reference")
		return ctrl.Result{}, nil
	}
	if cluster != nil {
		log = log.WithValues("Cluster", cluster.Name)
		ctx = ctrl.LoggerInto(ctx, log)
	}

	if added, err := finalizers.EnsureFinalizer(ctx, r.Client, mc, infrav1.ClusterFinalizer); err != nil || added {
		return ctrl.Result{}, err
	}

	helper, err := patch.NewHelper(mc, r.Client)
	if err != nil {
		return ctrl.Result{}, err
	}
	if cluster != nil {
		if isPaused, requeue, err := paused.EnsurePausedCondition(ctx, r.Client, cluster, mc); err != nil || isPaused || requeue {
			return ctrl.Result{}, err
		}
	}
	defer func() {
		if err := r.patch(ctx, helper, mc); err != nil {
			reterr = kerrors.NewAggregate([]error{reterr, err})
		}
	}()

	if !mc.DeletionTimestamp.IsZero() {
		return r.reconcileDelete(ctx, mc, cluster)
	}
	return r.reconcileNormal(ctx, mc, cluster)
}

// patch sets the summary Ready condition and writes the object.
func (r *MicrovmClusterReconciler) patch(ctx context.Context, h *patch.Helper, mc *infrav1.MicrovmCluster) error {
	if !mc.DeletionTimestamp.IsZero() {
		conditions.Set(mc, metav1.Condition{
			Type:    infrav1.ReadyCondition,
			Status:  metav1.ConditionFalse,
			Reason:  infrav1.DeletingReason,
			Message: conditions.GetMessage(mc, infrav1.ReadyCondition),
		})
	} else if err := conditions.SetSummaryCondition(mc, mc, infrav1.ReadyCondition,
		conditions.ForConditionTypes{infrav1.ControlPlaneEndpointReachableCondition}); err != nil {
		return err
	}
	return h.Patch(ctx, mc, patch.WithOwnedConditions{Conditions: []string{
		infrav1.ReadyCondition, infrav1.ControlPlaneEndpointReachableCondition, infrav1.PausedCondition,
	}})
}

func (r *MicrovmClusterReconciler) reconcileNormal(ctx context.Context, mc *infrav1.MicrovmCluster, cluster *clusterv1.Cluster) (ctrl.Result, error) {
	mc.Status.FailureDomains = failureDomains(mc)

	ep := mc.Spec.ControlPlaneEndpoint
	if !ep.IsValid() {
		ep = cluster.Spec.ControlPlaneEndpoint
	}
	if !ep.IsValid() {
		conditions.Set(mc, metav1.Condition{
			Type:    infrav1.ControlPlaneEndpointReachableCondition,
			Status:  metav1.ConditionFalse,
			Reason:  infrav1.WaitingForControlPlaneEndpointReason,
			Message: "Neither the MicrovmCluster nor the Cluster sets spec.controlPlaneEndpoint",
		})
		// A change of the Cluster's endpoint triggers a reconcile.
		return ctrl.Result{}, nil
	}

	// The endpoint is known: machines may be created. Once provisioned, a
	// cluster stays provisioned.
	mc.Status.Initialization.Provisioned = ptr.To(true)
	mc.Status.Ready = true

	timeout := cmp.Or(r.EndpointDialTimeout, 2*time.Second)
	if err := dialEndpoint(ctx, ep.String(), timeout); err != nil {
		conditions.Set(mc, metav1.Condition{
			Type:    infrav1.ControlPlaneEndpointReachableCondition,
			Status:  metav1.ConditionFalse,
			Reason:  infrav1.ControlPlaneEndpointUnreachableReason,
			Message: fmt.Sprintf("%s does not answer: %v", ep.String(), err),
		})
	} else {
		conditions.Set(mc, metav1.Condition{
			Type:    infrav1.ControlPlaneEndpointReachableCondition,
			Status:  metav1.ConditionTrue,
			Reason:  infrav1.ControlPlaneEndpointReachableReason,
			Message: ep.String() + " answers",
		})
	}
	return ctrl.Result{RequeueAfter: cmp.Or(r.EndpointCheckInterval, 30*time.Second)}, nil
}

// reconcileDelete waits for the cluster's MicrovmMachines to be gone (they
// need the cluster's credentials to delete their microVMs), then lets the
// MicrovmCluster go.
func (r *MicrovmClusterReconciler) reconcileDelete(ctx context.Context, mc *infrav1.MicrovmCluster, cluster *clusterv1.Cluster) (ctrl.Result, error) {
	name := mc.Labels[clusterv1.ClusterNameLabel]
	if cluster != nil {
		name = cluster.Name
	}
	if name != "" {
		var machines infrav1.MicrovmMachineList
		if err := r.Client.List(ctx, &machines, client.InNamespace(mc.Namespace),
			client.MatchingLabels{clusterv1.ClusterNameLabel: name}); err != nil {
			return ctrl.Result{}, err
		}
		if n := len(machines.Items); n > 0 {
			conditions.Set(mc, metav1.Condition{
				Type:    infrav1.ReadyCondition,
				Status:  metav1.ConditionFalse,
				Reason:  infrav1.DeletingReason,
				Message: fmt.Sprintf("Waiting for %d MicrovmMachines to be deleted", n),
			})
			return ctrl.Result{RequeueAfter: 5 * time.Second}, nil
		}
	}
	controllerutil.RemoveFinalizer(mc, infrav1.ClusterFinalizer)
	return ctrl.Result{}, nil
}

// failureDomains has one failure domain per host, named by its endpoint.
func failureDomains(mc *infrav1.MicrovmCluster) []clusterv1.FailureDomain {
	pool := hostPool(mc)
	if pool == nil {
		return nil
	}
	out := make([]clusterv1.FailureDomain, 0, len(pool.Hosts))
	for _, h := range pool.Hosts {
		fd := clusterv1.FailureDomain{Name: h.Endpoint, ControlPlane: ptr.To(h.AllowsControlPlane())}
		if h.Name != "" {
			fd.Attributes = map[string]string{"name": h.Name}
		}
		out = append(out, fd)
	}
	return out
}
