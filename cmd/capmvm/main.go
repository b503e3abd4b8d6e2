// Command capmvm is the manager of CAPMVM, the Cluster API infrastructure
// provider for microVMs on flintlock hosts: it runs the MicrovmCluster and
// MicrovmMachine controllers, the admission webhooks, health probes and
// metrics, with optional leader election.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/liquidmetal-go/liquidmetal/internal/controller"
	"github.com/liquidmetal-go/liquidmetal/internal/hostclient"
	webhookv1alpha1 "github.com/liquidmetal-go/liquidmetal/internal/webhook/v1alpha1"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "capmvm:", err)
		os.Exit(1)
	}
}

// options are the manager's flags.
type options struct {
	concurrency             int
	syncPeriod              time.Duration
	watchFilter             string
	namespace               string
	healthAddr              string
	metricsAddr             string
	leaderElect             bool
	leaderElectionID        string
	leaderElectionNamespace string
	webhookPort             int
	webhookCertDir          string
	enableWebhooks          bool
	hostGracePeriod         time.Duration
	hostRPCTimeout          time.Duration
	kubeAPIQPS              float32
	kubeAPIBurst            int
	logLevel                string
	kubeconfig              string
}

func newCommand() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:           "capmvm",
		Short:         "The Cluster API provider for microVMs on flintlock hosts",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.concurrency, "concurrency", 10, "reconciles each controller runs at once (MaxConcurrentReconciles)")
	f.DurationVar(&o.syncPeriod, "sync-period", 10*time.Minute, "how often every watched object is reconciled again")
	f.StringVar(&o.watchFilter, "watch-filter", "", "only reconcile objects labelled cluster.x-k8s.io/watch-filter=<value>")
	f.StringVar(&o.namespace, "namespace", "", "only watch this namespace (default: all)")
	f.StringVar(&o.healthAddr, "health-addr", ":9440", "address of the /healthz and /readyz probes")
	f.StringVar(&o.metricsAddr, "metrics-bind-addr", ":8080", `address of the Prometheus /metrics endpoint ("0" turns it off)`)
	f.BoolVar(&o.leaderElect, "leader-elect", false, "run only while holding the leader election lease")
	f.StringVar(&o.leaderElectionID, "leader-election-id", "controller-leader-election-capmvm", "name of the leader election lease")
	f.StringVar(&o.leaderElectionNamespace, "leader-election-namespace", os.Getenv("POD_NAMESPACE"),
		"namespace of the leader election lease (default: $POD_NAMESPACE, or the pod's own namespace)")
	f.IntVar(&o.webhookPort, "webhook-port", 9443, "port of the admission webhook server")
	f.StringVar(&o.webhookCertDir, "webhook-cert-dir", "/tmp/k8s-webhook-server/serving-certs", "folder holding the webhook server's tls.crt and tls.key")
	f.BoolVar(&o.enableWebhooks, "enable-webhooks", true, "serve the admission webhooks")
	f.DurationVar(&o.hostGracePeriod, "host-grace-period", controller.DefaultHostGracePeriod,
		"how long a deleted machine's host may stay unreachable before the machine is let go without its microVM's deletion")
	f.DurationVar(&o.hostRPCTimeout, "host-rpc-timeout", controller.DefaultRPCTimeout, "time limit of each call to a flintlock host")
	f.Float32Var(&o.kubeAPIQPS, "kube-api-qps", controller.DefaultKubeAPIQPS,
		"client-side limit of queries per second to the Kubernetes API server; each new machine costs 3 writes, "+
			"and the API server protects itself with API Priority and Fairness, so this only stops a runaway controller (negative: no limit)")
	f.IntVar(&o.kubeAPIBurst, "kube-api-burst", controller.DefaultKubeAPIBurst,
		"queries to the Kubernetes API server allowed at once before --kube-api-qps applies (absorbs a burst of new machines' writes)")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
	return cmd
}

// newLogger logs with slog (text on stderr); controller-runtime, Cluster
// API and client-go get it through the logr bridge.
func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func run(ctx context.Context, o options) error {
	logger, err := newLogger(o.logLevel)
	if err != nil {
		return err
	}
	slog.SetDefault(logger)
	log := logr.FromSlogHandler(logger.Handler())
	ctrl.SetLogger(log)
	klog.SetLogger(log)
	if o.concurrency < 1 {
		return fmt.Errorf("--concurrency %d: must be at least 1", o.concurrency)
	}

	if o.kubeconfig != "" {
		if err := os.Setenv("KUBECONFIG", o.kubeconfig); err != nil {
			return err
		}
	}
	restCfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubernetes client configuration: %w", err)
	}
	restCfg.QPS, restCfg.Burst = o.kubeAPIQPS, o.kubeAPIBurst
	restCfg.UserAgent = "capmvm"

	cacheOpts := cache.Options{SyncPeriod: &o.syncPeriod}
	if o.namespace != "" {
		cacheOpts.DefaultNamespaces = map[string]cache.Config{o.namespace: {}}
	}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                  controller.NewScheme(),
		Cache:                   cacheOpts,
		Metrics:                 metricsserver.Options{BindAddress: o.metricsAddr},
		HealthProbeBindAddress:  o.healthAddr,
		LeaderElection:          o.leaderElect,
		LeaderElectionID:        o.leaderElectionID,
		LeaderElectionNamespace: o.leaderElectionNamespace,
		WebhookServer:           webhook.NewServer(webhook.Options{Port: o.webhookPort, CertDir: o.webhookCertDir}),
	})
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}

	pool, err := hostclient.New(hostclient.Options{Registerer: metrics.Registry, Logger: logger})
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := controller.Setup(ctx, mgr, controller.Options{
		Hosts:            pool,
		WatchFilterValue: o.watchFilter,
		Concurrency:      o.concurrency,
		HostGracePeriod:  o.hostGracePeriod,
		RPCTimeout:       o.hostRPCTimeout,
	}); err != nil {
		return err
	}

	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if o.enableWebhooks {
		if err := webhookv1alpha1.SetupWithManager(mgr); err != nil {
			return fmt.Errorf("webhooks: %w", err)
		}
		if err := mgr.AddReadyzCheck("webhook", mgr.GetWebhookServer().StartedChecker()); err != nil {
			return err
		}
	}

	logger.Info("starting capmvm", "concurrency", o.concurrency, "watch-filter", o.watchFilter,
		"namespace", orAll(o.namespace), "leader-elect", o.leaderElect, "webhooks", o.enableWebhooks)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	return nil
}

func orAll(ns string) string {
	if strings.TrimSpace(ns) == "" {
		return "all"
	}
	return ns
}
