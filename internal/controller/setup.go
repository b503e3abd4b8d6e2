package controller

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/controller"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/internal/hostclient"
)

// Defaults of the manager's client rate to the Kubernetes API server
// (capmvm --kube-api-qps and --kube-api-burst). A MicrovmMachine costs
// three writes to get its microVM (the claim with the finalizer, the
// provider ID, the status), so 100 machines at once are 300 writes: at
// client-go's usual 20 QPS that queue alone takes some 15 s, at 100 QPS
// with a burst of 200 it is about a second. The API server protects itself
// with API Priority and Fairness (controllers land in the workload-high or
// workload-low priority levels), so the client-side limit only needs to
// keep a runaway controller from flooding it.
const (
	DefaultKubeAPIQPS   = 100
	DefaultKubeAPIBurst = 200
)

// NewScheme returns a scheme with the Kubernetes, Cluster API v1beta2 and
// CAPMVM types.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(clusterv1.AddToScheme(s))
	utilruntime.Must(infrav1.AddToScheme(s))
	return s
}

// Options configures both controllers; zero durations take the
// reconcilers' defaults.
type Options struct {
	// Hosts is the connection pool to the flintlock hosts (required).
	Hosts *hostclient.Pool
	// WatchFilterValue limits the controllers to objects labelled
	// cluster.x-k8s.io/watch-filter=<value>.
	WatchFilterValue string
	// Concurrency is each controller's MaxConcurrentReconciles; 10 when 0.
	Concurrency int

	HostGracePeriod       time.Duration
	PollInterval          time.Duration
	ResyncInterval        time.Duration
	RPCTimeout            time.Duration
	EndpointCheckInterval time.Duration
}

// Setup registers the MicrovmCluster and MicrovmMachine controllers with
// mgr.
func Setup(ctx context.Context, mgr ctrl.Manager, o Options) error {
	if o.Hosts == nil {
		return fmt.Errorf("controllers need a host connection pool: %w", errdefs.ErrInvalidArgument)
	}
	if o.Concurrency < 0 {
		return fmt.Errorf("concurrency %d is negative: %w", o.Concurrency, errdefs.ErrInvalidArgument)
	}
	opts := controller.Options{MaxConcurrentReconciles: max(o.Concurrency, 0)}
	if opts.MaxConcurrentReconciles == 0 {
		opts.MaxConcurrentReconciles = 10
	}
	cr := &MicrovmClusterReconciler{
		Client:                mgr.GetClient(),
		WatchFilterValue:      o.WatchFilterValue,
		EndpointCheckInterval: o.EndpointCheckInterval,
	}
	if err := cr.SetupWithManager(ctx, mgr, opts); err != nil {
		return fmt.Errorf("microvmcluster controller: %w", err)
	}
	mr := &MicrovmMachineReconciler{
		Client:           mgr.GetClient(),
		Recorder:         mgr.GetEventRecorderFor("microvmmachine-controller"),
		Hosts:            o.Hosts,
		WatchFilterValue: o.WatchFilterValue,
		HostGracePeriod:  o.HostGracePeriod,
		PollInterval:     o.PollInterval,
		ResyncInterval:   o.ResyncInterval,
		RPCTimeout:       o.RPCTimeout,
	}
	if err := mr.SetupWithManager(ctx, mgr, opts); err != nil {
		return fmt.Errorf("microvmmachine controller: %w", err)
	}
	return nil
}
