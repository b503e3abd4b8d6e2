package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/liquidmetal-go/liquidmetal/internal/console"
	"github.com/liquidmetal-go/liquidmetal/internal/images"
	"github.com/liquidmetal-go/liquidmetal/internal/network"
	"github.com/liquidmetal-go/liquidmetal/internal/reconcile"
	"github.com/liquidmetal-go/liquidmetal/internal/registryauth"
	"github.com/liquidmetal-go/liquidmetal/internal/server"
	"github.com/liquidmetal-go/liquidmetal/internal/store"
)

// options are flintlockd's settings; each is a flag, a FLINTLOCKD_*
// variable and a key of the config file.
type options struct {
	configFile string

	grpcEndpoint    string
	httpEndpoint    string
	metricsEndpoint string

	stateDir            string
	containerdSocket    string
	containerdNamespace string
	snapshotter         string

	// registries: credentials, hosts.toml folder, plain-HTTP hosts.
	registryConfig    string
	registryHostsDir  string
	registryPlainHTTP []string

	defaultProvider string
	qemuBinary      string
	qemuAccel       string

	bridgeName      string
	parentInterface string

	tlsCert, tlsKey, tlsClientCA string
	insecure                     bool
	token, tokenFile             string
	maxRecvBytes                 int

	workers        int
	maxRetries     int
	retryBaseDelay time.Duration
	resyncPeriod   time.Duration
	stopTimeout    time.Duration
	startPaused    bool

	// consoleMaxBytes caps each VM's console.log (internal/console).
	consoleMaxBytes int64

	// capacity is what the host service reports as this host's capacity.
	capacity server.CapacityConfig

	// vmm: the other providers and the metadata service (providers.go).
	vmm vmmOptions
	// volumes: volume method and image GC (volumes.go).
	volumes volumeOptions

	logLevel  string
	logFormat string
}

func newRunCommand() *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the microVM service",
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.vmm.changed = func(name string) bool { return cmd.Flags().Changed(name) }
			if err := applyConfig(cmd.Flags(), o.configFile); err != nil {
				return err
			}
			return run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.configFile, "config", "", "YAML config file; keys are flag names")
	f.StringVar(&o.grpcEndpoint, "grpc-endpoint", "0.0.0.0:9090", "address of the gRPC API")
	f.StringVar(&o.httpEndpoint, "http-endpoint", "", "address of the HTTP/JSON gateway (off when empty)")
	f.StringVar(&o.metricsEndpoint, "metrics-endpoint", "127.0.0.1:9091", "address of /metrics, /healthz and /readyz (off when empty)")
	f.StringVar(&o.stateDir, "state-dir", "/var/lib/flintlock", "folder of the store and the VMs' files")
	f.StringVar(&o.containerdSocket, "containerd-socket", "/run/containerd/containerd.sock", "containerd's socket")
	f.StringVar(&o.containerdNamespace, "containerd-namespace", "flintlock", "containerd namespace of flintlockd's images and leases")
	f.StringVar(&o.snapshotter, "snapshotter", "", "containerd snapshotter to unpack images with (default: overlayfs where it works, else native)")
	f.StringVar(&o.registryConfig, "registry-config", "", "docker-style config.json with registry credentials (auths); re-read when it changes")
	f.StringVar(&o.registryHostsDir, "registry-hosts-dir", "", "containerd certs.d-style folder of <host>/hosts.toml (mirrors, CAs, client certificates)")
	f.StringSliceVar(&o.registryPlainHTTP, "registry-plain-http", nil, "registry hosts (host:port) reached over plain HTTP; loopback registries always are")
	f.StringVar(&o.defaultProvider, "default-provider", "qemu", "VMM provider of VMs that name none")
	f.StringVar(&o.qemuBinary, "qemu-binary", "qemu-system-x86_64", "QEMU binary")
	f.StringVar(&o.qemuAccel, "qemu-accel", "auto", "QEMU acceleration: auto (probe KVM, else TCG), kvm or tcg")
	f.StringVar(&o.bridgeName, "bridge-name", "", "default bridge for TAP interfaces")
	f.StringVar(&o.parentInterface, "parent-iface", "", "parent interface for macvtap interfaces")
	f.StringVar(&o.tlsCert, "tls-cert", "", "server certificate (PEM)")
	f.StringVar(&o.tlsKey, "tls-key", "", "server key (PEM)")
	f.StringVar(&o.tlsClientCA, "tls-client-ca", "", "CA bundle to verify client certificates with (enables mutual TLS)")
	f.BoolVar(&o.insecure, "insecure", false, "serve without TLS")
	f.StringVar(&o.token, "basic-auth-token", "", "require this token (authorization: Basic base64(token))")
	f.StringVar(&o.tokenFile, "basic-auth-token-file", "", "file holding the basic-auth token")
	f.IntVar(&o.maxRecvBytes, "max-request-bytes", 4<<20, "largest request accepted")
	f.IntVar(&o.workers, "workers", 8, "VMs reconciled at once")
	f.IntVar(&o.maxRetries, "max-retries", 5, "failed passes before a VM is FAILED")
	f.DurationVar(&o.retryBaseDelay, "retry-base-delay", 500*time.Millisecond, "first retry delay; doubles each try")
	f.DurationVar(&o.resyncPeriod, "resync-period", time.Minute, "period of a full reconcile of every VM")
	f.DurationVar(&o.stopTimeout, "vmm-stop-timeout", 0, "graceful shutdown time of a VMM on delete before it is killed")
	f.Float64Var(&o.capacity.VCPUOvercommit, "capacity-vcpu-overcommit", 1, "vCPUs offered to microVMs per host CPU (host capacity service)")
	f.Int64Var(&o.capacity.MemoryMiB, "capacity-memory-mib", 0, "memory in MiB offered to microVMs before the reservation (default: the host's MemTotal)")
	f.Int64Var(&o.capacity.ReservedMemoryMiB, "capacity-reserved-memory-mib", 0, "memory in MiB kept for the host, not offered to microVMs")
	f.Int64Var(&o.consoleMaxBytes, "console-max-bytes", console.DefaultMaxBytes, "size cap of each microVM's console.log; older output moves to console.log.1")
	addVMMFlags(f, &o.vmm)
	addVolumeFlags(f, &o.volumes)
	f.BoolVar(&o.startPaused, "start-paused", false, "start guests paused (benchmarks: keeps the guest's boot out of the figures)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.logFormat, "log-format", "text", "text or json")
	_ = f.MarkHidden("start-paused")
	return cmd
}

func newLogger(o *options) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch o.logFormat {
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, hopts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, hopts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q is not text or json", o.logFormat)
}

func run(ctx context.Context, o *options) error {
	log, err := newLogger(o)
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	if o.consoleMaxBytes <= 0 {
		return fmt.Errorf("--console-max-bytes %d: must be positive", o.consoleMaxBytes)
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	tlsConfig, err := serverTLS(o)
	if err != nil {
		return err
	}
	token := o.token
	if o.tokenFile != "" {
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return fmt.Errorf("--basic-auth-token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}

	if err := os.MkdirAll(o.stateDir, 0o750); err != nil {
		return err
	}
	db, err := store.Open(filepath.Join(o.stateDir, "flintlockd.db"))
	if err != nil {
		return err
	}
	defer db.Close()

	cd, err := containerd.New(o.containerdSocket, containerd.WithDefaultNamespace(o.containerdNamespace))
	if err != nil {
		return fmt.Errorf("connecting to containerd at %s: %w", o.containerdSocket, err)
	}
	defer cd.Close()
	regs, err := registryauth.New(registryauth.Options{
		ConfigFile: o.registryConfig,
		HostsDir:   o.registryHostsDir,
		PlainHTTP:  o.registryPlainHTTP,
		Logger:     log,
	})
	if err != nil {
		return fmt.Errorf("--registry-config/--registry-hosts-dir: %w", err)
	}
	imgs := images.New(cd, images.Options{
		Resolver:    regs.Resolver,
		Namespace:   o.containerdNamespace,
		Snapshotter: o.snapshotter,
		CacheDir:    filepath.Join(o.stateDir, "images"),
		Logger:      log,
	})

	providers, err := newProviders(o, log)
	if err != nil {
		return err
	}
	names := sortedNames(providers)
	metadataService, err := newMetadataService(o, log)
	if err != nil {
		return err
	}
	var metadata reconcile.MetadataService // stays a nil interface when off
	if metadataService != nil {
		defer metadataService.Close()
		metadata = metadataService
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	vols, err := newVolumes(o.volumes, o.stateDir, reg, log)
	if err != nil {
		return err
	}
	rec, err := reconcile.New(reconcile.Config{
		Volumes:        vols,
		ImageGCGrace:   o.volumes.gcGrace,
		Store:          db,
		Images:         imgs,
		Network:        network.New(network.Options{DefaultBridge: o.bridgeName, ParentInterface: o.parentInterface}),
		Providers:      providers,
		Metadata:       metadata,
		StateDir:       o.stateDir,
		Workers:        o.workers,
		MaxRetries:     o.maxRetries,
		RetryBaseDelay: o.retryBaseDelay,
		ResyncPeriod:   o.resyncPeriod,
		StopTimeout:    o.stopTimeout,
		StartPaused:    o.startPaused,
		AfterStep:      crashHook(o.vmm.crashAfterStep, log),
		Logger:         log,
		Registerer:     reg,
	})
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{
		Store:           db,
		Queue:           rec,
		Providers:       names,
		Admit:           rec.Admit,
		DefaultProvider: o.defaultProvider,
		Token:           token,
		Registerer:      reg,
		Logger:          log,
		MaxRecvBytes:    o.maxRecvBytes,
		Capacity:        o.capacity,
		StateDir:        o.stateDir,
	})
	if err != nil {
		return err
	}
	defer srv.Close()

	var creds credentials.TransportCredentials
	if tlsConfig != nil {
		creds = credentials.NewTLS(tlsConfig)
	}
	gs := srv.GRPCServer(creds)
	lis, err := net.Listen("tcp", o.grpcEndpoint)
	if err != nil {
		return fmt.Errorf("--grpc-endpoint: %w", err)
	}

	var gw http.Handler
	if o.httpEndpoint != "" {
		if gw, err = srv.Gateway(); err != nil {
			return err
		}
	}

	errc := make(chan error, 4)
	recCtx, cancelRec := context.WithCancel(context.Background())
	recDone := make(chan struct{})
	go func() {
		defer close(recDone)
		if err := rec.Run(recCtx); err != nil {
			errc <- fmt.Errorf("reconciler: %w", err)
		}
	}()
	go rec.RunGC(recCtx, o.volumes.gcInterval)
	go console.Rotator{Root: filepath.Join(o.stateDir, "vm"), MaxBytes: o.consoleMaxBytes, Logger: log}.Run(recCtx)
	go func() { errc <- serveGRPC(gs, lis) }()

	var servers []*http.Server
	if gw != nil {
		hs := &http.Server{Addr: o.httpEndpoint, Handler: gw, TLSConfig: tlsConfig, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, hs)
		go func() { errc <- serveHTTP(hs, tlsConfig != nil, "--http-endpoint") }()
	}
	if o.metricsEndpoint != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
			if _, err := cd.Version(r.Context()); err != nil {
				http.Error(w, "containerd: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		})
		hs := &http.Server{Addr: o.metricsEndpoint, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, hs)
		go func() { errc <- serveHTTP(hs, false, "--metrics-endpoint") }()
	}
	log.Info("flintlockd started", "grpc", lis.Addr().String(), "http", o.httpEndpoint,
		"metrics", o.metricsEndpoint, "tls", tlsConfig != nil, "state-dir", o.stateDir, "providers", names)

	select {
	case <-ctx.Done():
		err = nil
	case err = <-errc:
	}
	log.Info("flintlockd stopping; VMs keep running")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, hs := range servers {
		_ = hs.Shutdown(shutdownCtx)
	}
	gs.GracefulStop()
	cancelRec()
	<-recDone
	return err
}

func serverTLS(o *options) (*tls.Config, error) {
	if o.insecure {
		if o.tlsCert != "" || o.tlsKey != "" {
			return nil, errors.New("--insecure contradicts --tls-cert/--tls-key")
		}
		return nil, nil
	}
	if o.tlsCert == "" || o.tlsKey == "" {
		return nil, errors.New("TLS is on by default: give --tls-cert and --tls-key, or --insecure to serve plain text")
	}
	return server.TLSConfig(o.tlsCert, o.tlsKey, o.tlsClientCA)
}

func serveGRPC(gs *grpc.Server, lis net.Listener) error {
	if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("grpc: %w", err)
	}
	return nil
}

func serveHTTP(hs *http.Server, withTLS bool, flag string) error {
	var err error
	if withTLS {
		err = hs.ListenAndServeTLS("", "")
	} else {
		err = hs.ListenAndServe()
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s: %w", flag, err)
	}
	return nil
}
