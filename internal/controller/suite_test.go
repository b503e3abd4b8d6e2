package controller_test

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/internal/controller"
	"github.com/liquidmetal-go/liquidmetal/internal/controller/controllertest"
	"github.com/liquidmetal-go/liquidmetal/internal/controller/flintlocktest"
	"github.com/liquidmetal-go/liquidmetal/internal/hostclient"
	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// eventually retries a check until it passes or the time is up.
var eventually = testenv.Eventually

// The package's tests share one API server and one manager running both
// controllers with short timings. The manager only handles objects with
// the watch-filter label; tests that call Reconcile themselves leave the
// label off.
const (
	watchFilter = "capmvm-test"
	gracePeriod = 3 * time.Second
	poll        = 200 * time.Millisecond
	rpcTimeout  = 2 * time.Second
)

var (
	cfg  *rest.Config
	k8s  client.Client // uncached
	pool *hostclient.Pool
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// The controllers' errors (most of them about objects a finished test
	// removed) are shown with -v only.
	flag.Parse()
	logOut := io.Discard
	if testing.Verbose() {
		logOut = os.Stderr
	}
	logger := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelError}))
	ctrl.SetLogger(logr.FromSlogHandler(logger.Handler()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var stop func() error
	var err error
	cfg, stop, err = controllertest.StartAPIServer(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "envtest:", err)
		return 1
	}
	defer func() {
		if err := stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop envtest:", err)
		}
	}()
	cfg.QPS, cfg.Burst = 500, 1000

	scheme := controller.NewScheme()
	if k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if pool, err = hostclient.New(hostclient.Options{ReplaceInterval: time.Second, Logger: logger}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pool.Close()
	err = controller.Setup(ctx, mgr, controller.Options{
		Hosts:                 pool,
		WatchFilterValue:      watchFilter,
		Concurrency:           8,
		HostGracePeriod:       gracePeriod,
		PollInterval:          poll,
		ResyncInterval:        time.Second,
		RPCTimeout:            rpcTimeout,
		EndpointCheckInterval: 500 * time.Millisecond,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "manager:", err)
		}
	})
	code := m.Run()
	cancel()
	wg.Wait()
	return code
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// hostSpec is one flintlock host of a fixture.
type hostSpec struct {
	controlPlane bool
	opts         flintlocktest.Options
	endpoint     string // set to use an address without a double
}

// fixture is a Cluster with its MicrovmCluster in a namespace of its own,
// and test doubles of flintlockd as its hosts.
type fixture struct {
	t       *testing.T
	ctx     context.Context
	ns      string
	labels  map[string]string // put on every object
	cluster *clusterv1.Cluster
	mc      *infrav1.MicrovmCluster
	hosts   []*flintlocktest.Server
	addrs   []string
}

type fixtureOpts struct {
	hosts       []hostSpec
	unmanaged   bool // leave the watch-filter label off
	dynamic     bool
	endpoint    clusterv1.APIEndpoint
	tlsSecret   string
	authSecret  string
	sshKeys     []infrav1.SSHPublicKey
	provisioned bool // set the Cluster's infrastructureProvisioned
}

var nsCounter struct {
	sync.Mutex
	n int
}

func newFixture(t *testing.T, o fixtureOpts) *fixture {
	t.Helper()
	ctx := testCtx(t)
	nsCounter.Lock()
	nsCounter.n++
	name := fmt.Sprintf("%s-%d", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), nsCounter.n)
	nsCounter.Unlock()
	if len(name) > 60 {
		name = name[len(name)-60:]
	}
	name = strings.Trim(strings.ReplaceAll(name, "_", "-"), "-")
	f := &fixture{t: t, ctx: ctx, ns: name, labels: map[string]string{}}
	if !o.unmanaged {
		f.labels[clusterv1.WatchLabel] = watchFilter
	}
	f.create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})

	var hosts []infrav1.Host
	for i, h := range o.hosts {
		addr := h.endpoint
		if addr == "" {
			srv, err := flintlocktest.Start(h.opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(srv.Close)
			f.hosts = append(f.hosts, srv)
			addr = srv.Addr()
		}
		f.addrs = append(f.addrs, addr)
		hosts = append(hosts, infrav1.Host{Name: fmt.Sprintf("host-%d", i), Endpoint: addr, ControlplaneAllowed: ptr.To(h.controlPlane)})
	}
	// Cleanups run last first: the objects go before the hosts.
	t.Cleanup(f.cleanup)

	f.cluster = &clusterv1.Cluster{
		ObjectMeta: metav1.ObjectMeta{Name: "c1", Namespace: name, Labels: f.withLabels(nil)},
		Spec: clusterv1.ClusterSpec{InfrastructureRef: clusterv1.ContractVersionedObjectReference{
			APIGroup: infrav1.GroupVersion.Group, Kind: "MicrovmCluster", Name: "c1",
		}},
	}
	f.create(f.cluster)
	pool := &infrav1.HostPool{Hosts: hosts, BasicAuthSecret: o.authSecret}
	f.mc = &infrav1.MicrovmCluster{
		ObjectMeta: metav1.ObjectMeta{
			Name: "c1", Namespace: name,
			Labels: f.withLabels(map[string]string{clusterv1.ClusterNameLabel: "c1"}),
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: clusterv1.GroupVersion.String(), Kind: "Cluster", Name: "c1", UID: f.cluster.UID,
			}},
		},
		Spec: infrav1.MicrovmClusterSpec{
			ControlPlaneEndpoint: o.endpoint,
			SSHPublicKeys:        o.sshKeys,
			TLSSecretRef:         o.tlsSecret,
		},
	}
	if o.dynamic {
		f.mc.Spec.Placement.DynamicPool = pool
	} else {
		f.mc.Spec.Placement.StaticPool = pool
	}
	f.create(f.mc)
	if o.provisioned {
		f.provision()
	}
	return f
}

func (f *fixture) withLabels(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range f.labels {
		out[k] = v
	}
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (f *fixture) create(obj client.Object) {
	f.t.Helper()
	if err := k8s.Create(f.ctx, obj); err != nil {
		f.t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

// provision does what Cluster API does once the MicrovmCluster is
// provisioned.
func (f *fixture) provision() {
	f.t.Helper()
	base := f.cluster.DeepCopy()
	f.cluster.Status.Initialization.InfrastructureProvisioned = ptr.To(true)
	if err := k8s.Status().Patch(f.ctx, f.cluster, client.MergeFrom(base)); err != nil {
		f.t.Fatal(err)
	}
}

// cleanup removes the finalizers the controllers set and deletes the
// objects, so that nothing of the test is reconciled any more.
func (f *fixture) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mms infrav1.MicrovmMachineList
	if err := k8s.List(ctx, &mms, client.InNamespace(f.ns)); err == nil {
		for i := range mms.Items {
			f.strip(ctx, &mms.Items[i])
		}
	}
	var mcs infrav1.MicrovmClusterList
	if err := k8s.List(ctx, &mcs, client.InNamespace(f.ns)); err == nil {
		for i := range mcs.Items {
			f.strip(ctx, &mcs.Items[i])
		}
	}
	_ = k8s.DeleteAllOf(ctx, &clusterv1.Machine{}, client.InNamespace(f.ns))
	_ = k8s.DeleteAllOf(ctx, &clusterv1.Cluster{}, client.InNamespace(f.ns))
	_ = k8s.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: f.ns}})
}

func (f *fixture) strip(ctx context.Context, obj client.Object) {
	if len(obj.GetFinalizers()) > 0 {
		base := obj.DeepCopyObject().(client.Object)
		obj.SetFinalizers(nil)
		_ = k8s.Patch(ctx, obj, client.MergeFrom(base))
	}
	_ = k8s.Delete(ctx, obj)
}

type machineOpts struct {
	controlPlane  bool
	deployment    string
	failureDomain string
	noBootstrap   bool
	sshKeys       []infrav1.SSHPublicKey
	interfaces    []infrav1.NetworkInterface
	memoryMb      int32
}

// machine creates a Machine with its bootstrap data secret and its
// MicrovmMachine, as Cluster API does.
func (f *fixture) machine(name string, o machineOpts) *infrav1.MicrovmMachine {
	f.t.Helper()
	labels := f.withLabels(map[string]string{clusterv1.ClusterNameLabel: f.cluster.Name})
	if o.controlPlane {
		labels[clusterv1.MachineControlPlaneLabel] = ""
	}
	if o.deployment != "" {
		labels[clusterv1.MachineDeploymentNameLabel] = o.deployment
	}
	secretName := name + "-bootstrap"
	f.create(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secretName, Namespace: f.ns},
		Data:       map[string][]byte{"value": []byte("#cloud-config\nruncmd: [echo " + name + "]\n"), "format": []byte("cloud-config")},
	})
	m := &clusterv1.Machine{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.ns, Labels: labels},
		Spec: clusterv1.MachineSpec{
			ClusterName: f.cluster.Name,
			Bootstrap:   clusterv1.Bootstrap{DataSecretName: ptr.To(secretName)},
			InfrastructureRef: clusterv1.ContractVersionedObjectReference{
				APIGroup: infrav1.GroupVersion.Group, Kind: "MicrovmMachine", Name: name,
			},
			FailureDomain: o.failureDomain,
		},
	}
	if o.noBootstrap {
		m.Spec.Bootstrap = clusterv1.Bootstrap{ConfigRef: clusterv1.ContractVersionedObjectReference{
			APIGroup: "bootstrap.cluster.x-k8s.io", Kind: "KubeadmConfig", Name: name,
		}}
	}
	f.create(m)
	ifaces := o.interfaces
	if ifaces == nil {
		ifaces = []infrav1.NetworkInterface{{GuestDeviceName: "eth0", Type: infrav1.IfaceTypeMacvtap}}
	}
	mm := &infrav1.MicrovmMachine{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: f.ns, Labels: labels,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: clusterv1.GroupVersion.String(), Kind: "Machine", Name: name, UID: m.UID,
				Controller: ptr.To(true),
			}},
		},
		Spec: infrav1.MicrovmMachineSpec{
			MicrovmSpec: infrav1.MicrovmSpec{
				VCPU: 2, MemoryMb: cmp.Or(o.memoryMb, 2048),
				RootVolume:        infrav1.Volume{ID: "root", Image: "example.org/node:1.34", MountPoint: "/"},
				Kernel:            infrav1.ContainerFileSource{Image: "example.org/kernel:6.1", Filename: "boot/vmlinux"},
				KernelCmdLine:     map[string]string{"console": "ttyS0"},
				NetworkInterfaces: ifaces,
				Labels:            map[string]string{"role": "node"},
			},
			SSHPublicKeys: o.sshKeys,
		},
	}
	f.create(mm)
	return mm
}

// get reads a MicrovmMachine (nil when it is gone).
func (f *fixture) get(name string) *infrav1.MicrovmMachine {
	f.t.Helper()
	mm := &infrav1.MicrovmMachine{}
	err := k8s.Get(f.ctx, client.ObjectKey{Namespace: f.ns, Name: name}, mm)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		f.t.Fatal(err)
	}
	return mm
}

// host returns the test double serving addr.
func (f *fixture) host(addr string) *flintlocktest.Server {
	for _, h := range f.hosts {
		if h.Addr() == addr {
			return h
		}
	}
	return nil
}

// running waits until the machine has a provider ID and returns the
// machine, its host's double and the microVM's uid.
func (f *fixture) created(name string) (*infrav1.MicrovmMachine, *flintlocktest.Server, string) {
	f.t.Helper()
	var mm *infrav1.MicrovmMachine
	eventually(f.t, 20*time.Second, name+" gets a provider ID", func() error {
		mm = f.get(name)
		if mm == nil || mm.Spec.ProviderID == "" {
			return fmt.Errorf("no provider ID yet: %+v", mm.Status.Conditions)
		}
		return nil
	})
	host, uid, err := controller.ParseProviderID(mm.Spec.ProviderID)
	if err != nil {
		f.t.Fatal(err)
	}
	srv := f.host(host)
	if srv == nil {
		f.t.Fatalf("provider ID %s names no host of the fixture", mm.Spec.ProviderID)
	}
	return mm, srv, uid
}

// condition waits until the machine's condition has the status and reason.
func (f *fixture) condition(name, condType string, st metav1.ConditionStatus, reason string) *infrav1.MicrovmMachine {
	f.t.Helper()
	var mm *infrav1.MicrovmMachine
	eventually(f.t, 20*time.Second, fmt.Sprintf("%s: %s=%s/%s", name, condType, st, reason), func() error {
		mm = f.get(name)
		if mm == nil {
			return errors.New("gone")
		}
		for _, c := range mm.Status.Conditions {
			if c.Type == condType {
				if c.Status == st && c.Reason == reason {
					return nil
				}
				return fmt.Errorf("%s is %s/%s: %s", condType, c.Status, c.Reason, c.Message)
			}
		}
		return fmt.Errorf("no %s condition: %+v", condType, mm.Status.Conditions)
	})
	return mm
}

// freeAddr is a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
