package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/controller"
	"github.com/liquidmetal-go/liquidmetal/internal/controller/controllertest"
	"github.com/liquidmetal-go/liquidmetal/internal/controller/flintlocktest"
	"github.com/liquidmetal-go/liquidmetal/internal/hostclient"
)

// The CAPMVM figure: MicrovmMachines created through the controller (a
// real kube-apiserver and etcd from envtest, the capmvm controllers in a
// manager) against in-process test doubles of flintlockd that report a
// microVM CREATED as soon as it is asked for, so the figure is the
// controller's own work (API server round trips, gRPC calls), not the VMs'.
var (
	capmvmRun         = flag.Bool("capmvm", true, "measure CAPMVM: MicrovmMachines created through the controller")
	capmvmOnly        = flag.Bool("capmvm-only", false, "measure CAPMVM only (needs no root, no flintlockd)")
	capmvmMachines    = flag.Int("capmvm-machines", 100, "MicrovmMachines created at once for the CAPMVM figure")
	capmvmHosts       = flag.Int("capmvm-hosts", 2, "flintlock hosts (test doubles) of the CAPMVM figure")
	capmvmConcurrency = flag.Int("capmvm-concurrency", 10, "the controllers' --concurrency for the CAPMVM figure")
	capmvmQPS         = flag.Float64("capmvm-kube-api-qps", controller.DefaultKubeAPIQPS, "the manager's --kube-api-qps for the CAPMVM figure (default: capmvm's)")
	capmvmBurst       = flag.Int("capmvm-kube-api-burst", controller.DefaultKubeAPIBurst, "the manager's --kube-api-burst for the CAPMVM figure (default: capmvm's)")
)

// CAPMVM goals (issue 3): all machines' microVMs created in 5 s, one gRPC
// connection per host.
const capmvmGoal = 5 * time.Second

type capmvmResult struct {
	machines, hosts, concurrency int
	qps                          float64
	burst                        int
	api                          *apiCounts      // the manager's requests to the API server
	submit                       time.Duration   // creating the MicrovmMachines
	allProviderID, allReady      time.Duration   // from the first create
	perMachine                   []time.Duration // create → provisioned, each
	conns                        []int           // TCP connections each host accepted
	vms                          []int           // microVMs each host holds
	creates                      int             // CreateMicroVM calls, all hosts
	calls                        int             // every call, all hosts
	poolCreated                  int
	reconciles                   float64
	rewatches                    int // times the bench's watch ended early
}

// capmvmPhase runs the CAPMVM figure.
func (b *bench) capmvmPhase(ctx context.Context) error {
	n, nh := *capmvmMachines, *capmvmHosts
	if n < 1 || nh < 1 {
		return fmt.Errorf("-capmvm-machines and -capmvm-hosts must be at least 1")
	}
	b.step("CAPMVM: API server (envtest), %d flintlockd test doubles, the capmvm controllers", nh)
	cfg, stop, err := controllertest.StartAPIServer(ctx)
	if err != nil {
		return fmt.Errorf("capmvm: %w", err)
	}
	defer func() { _ = stop() }()
	// The bench's own client is not throttled; the manager's is, as the
	// capmvm flags --kube-api-qps/--kube-api-burst would.
	benchCfg := rest.CopyConfig(cfg)
	benchCfg.QPS, benchCfg.Burst = -1, 0
	cfg.QPS, cfg.Burst = float32(*capmvmQPS), *capmvmBurst
	// Every request of the manager (its controllers, caches and event
	// recorder) is counted on its way to the API server.
	api := &apiCounter{}
	cfg.Wrap(api.wrap)

	var hosts []*flintlocktest.Server
	defer func() {
		for _, h := range hosts {
			h.Close()
		}
	}()
	var poolHosts []infrav1.Host
	for range nh {
		h, err := flintlocktest.Start(flintlocktest.Options{InitialState: types.MicroVMStatus_CREATED})
		if err != nil {
			return err
		}
		hosts = append(hosts, h)
		poolHosts = append(poolHosts, infrav1.Host{Endpoint: h.Addr()})
	}

	// The figure says what went wrong; the controllers' own logs (errors
	// about the API server going away at the end, mostly) are not shown.
	ctrl.SetLogger(logr.Discard())
	scheme := controller.NewScheme()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		return err
	}
	pool, err := hostclient.New(hostclient.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := controller.Setup(ctx, mgr, controller.Options{Hosts: pool, Concurrency: *capmvmConcurrency}); err != nil {
		return err
	}
	mctx, mcancel := context.WithCancel(ctx)
	var mwg sync.WaitGroup
	mwg.Go(func() {
		if err := mgr.Start(mctx); err != nil {
			fmt.Fprintln(b.log, "capmvm manager:", err)
		}
	})
	defer func() {
		mcancel()
		mwg.Wait()
	}()

	c, err := client.NewWithWatch(benchCfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	const ns = "bench"
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		return err
	}
	cluster := &clusterv1.Cluster{
		ObjectMeta: metav1.ObjectMeta{Name: "bench", Namespace: ns},
		Spec: clusterv1.ClusterSpec{InfrastructureRef: clusterv1.ContractVersionedObjectReference{
			APIGroup: infrav1.GroupVersion.Group, Kind: "MicrovmCluster", Name: "bench"}},
	}
	if err := c.Create(ctx, cluster); err != nil {
		return err
	}
	base := cluster.DeepCopy()
	cluster.Status.Initialization.InfrastructureProvisioned = ptr.To(true)
	if err := c.Status().Patch(ctx, cluster, client.MergeFrom(base)); err != nil {
		return err
	}
	if err := c.Create(ctx, &infrav1.MicrovmCluster{
		ObjectMeta: metav1.ObjectMeta{Name: "bench", Namespace: ns, Labels: map[string]string{clusterv1.ClusterNameLabel: "bench"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: clusterv1.GroupVersion.String(), Kind: "Cluster", Name: "bench", UID: cluster.UID}}},
		Spec: infrav1.MicrovmClusterSpec{
			ControlPlaneEndpoint: clusterv1.APIEndpoint{Host: "127.0.0.1", Port: 6443},
			Placement:            infrav1.Placement{StaticPool: &infrav1.HostPool{Hosts: poolHosts}},
		},
	}); err != nil {
		return err
	}

	// What Cluster API makes before the infrastructure machines: the
	// Machines of a MachineDeployment and their bootstrap data.
	b.step("CAPMVM: %d Machines with bootstrap data (what Cluster API creates first)", n)
	labels := map[string]string{clusterv1.ClusterNameLabel: "bench", clusterv1.MachineDeploymentNameLabel: "md-0"}
	machines := make([]*clusterv1.Machine, n)
	if err := parallel(ctx, n, 16, func(i int) error {
		name := fmt.Sprintf("md-0-%03d", i)
		if err := c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Data: map[string][]byte{"value": []byte("#cloud-config\n")}}); err != nil {
			return err
		}
		m := &clusterv1.Machine{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
			Spec: clusterv1.MachineSpec{ClusterName: "bench", Bootstrap: clusterv1.Bootstrap{DataSecretName: ptr.To(name)},
				InfrastructureRef: clusterv1.ContractVersionedObjectReference{APIGroup: infrav1.GroupVersion.Group, Kind: "MicrovmMachine", Name: name}},
		}
		machines[i] = m
		return c.Create(ctx, m)
	}); err != nil {
		return err
	}

	// Watch the MicrovmMachines to time each one.
	w, err := c.Watch(ctx, &infrav1.MicrovmMachineList{}, client.InNamespace(ns))
	if err != nil {
		return err
	}
	defer func() { w.Stop() }()
	b.step("CAPMVM: %d MicrovmMachines at once, until each has a provider ID and its microVM is CREATED", n)
	created := make([]time.Time, n)
	start := time.Now()
	if err := parallel(ctx, n, 16, func(i int) error {
		m := machines[i]
		mm := &infrav1.MicrovmMachine{
			ObjectMeta: metav1.ObjectMeta{Name: m.Name, Namespace: ns, Labels: labels,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: clusterv1.GroupVersion.String(), Kind: "Machine", Name: m.Name, UID: m.UID, Controller: ptr.To(true)}}},
			Spec: infrav1.MicrovmMachineSpec{MicrovmSpec: infrav1.MicrovmSpec{
				VCPU: 1, MemoryMb: 1024,
				RootVolume:        infrav1.Volume{ID: "root", Image: "example.org/node:1"},
				Kernel:            infrav1.ContainerFileSource{Image: "example.org/kernel:1"},
				NetworkInterfaces: []infrav1.NetworkInterface{{GuestDeviceName: "eth0", Type: infrav1.IfaceTypeTap}},
			}},
		}
		created[i] = time.Now()
		return c.Create(ctx, mm)
	}); err != nil {
		return err
	}
	submit := time.Since(start)

	index := map[string]int{}
	for i, m := range machines {
		index[m.Name] = i
	}
	withID, ready := map[string]time.Time{}, map[string]time.Time{}
	see := func(mm *infrav1.MicrovmMachine) {
		now := time.Now()
		if _, seen := withID[mm.Name]; !seen && mm.Spec.ProviderID != "" {
			withID[mm.Name] = now
		}
		if _, seen := ready[mm.Name]; !seen && ptr.Deref(mm.Status.Initialization.Provisioned, false) {
			ready[mm.Name] = now
		}
	}
	rewatches := 0
	timeout := time.After(2 * time.Minute)
	for len(ready) < n {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				// The API server may end a watch early (under this load it
				// sometimes does): list what was missed and watch on.
				rewatches++
				var list infrav1.MicrovmMachineList
				if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
					return fmt.Errorf("capmvm: list after the watch ended: %w", err)
				}
				for i := range list.Items {
					see(&list.Items[i])
				}
				w, err = c.Watch(ctx, &infrav1.MicrovmMachineList{}, client.InNamespace(ns),
					&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}})
				if err != nil {
					return fmt.Errorf("capmvm: watch again: %w", err)
				}
				continue
			}
			if ev.Type == watch.Error {
				return fmt.Errorf("capmvm: watch: %v", apierrors.FromObject(ev.Object))
			}
			if mm, isMM := ev.Object.(*infrav1.MicrovmMachine); isMM && ev.Type != watch.Deleted {
				see(mm)
			}
		case <-timeout:
			return fmt.Errorf("capmvm: %d of %d machines provisioned after 2 minutes", len(ready), n)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// The writes are counted once the reconciles the last ones triggered
	// (and the event recorder's queue) had a second to run.
	select {
	case <-time.After(time.Second):
	case <-ctx.Done():
		return ctx.Err()
	}
	r := &capmvmResult{machines: n, hosts: nh, concurrency: *capmvmConcurrency, qps: *capmvmQPS, burst: *capmvmBurst, submit: submit,
		api: api.snapshot(), rewatches: rewatches}
	for name, t := range withID {
		r.allProviderID = max(r.allProviderID, t.Sub(start))
		_ = name
	}
	for name, t := range ready {
		r.allReady = max(r.allReady, t.Sub(start))
		r.perMachine = append(r.perMachine, t.Sub(created[index[name]]))
	}
	for _, h := range hosts {
		r.conns = append(r.conns, h.Connections())
		r.vms = append(r.vms, len(h.VMs()))
		r.creates += h.Calls("CreateMicroVM")
		for _, m := range []string{"CreateMicroVM", "GetMicroVM", "ListMicroVMs", "DeleteMicroVM", "GetCapacity"} {
			r.calls += h.Calls(m)
		}
	}
	r.poolCreated = pool.Stats().Created
	if mfs, err := metrics.Registry.Gather(); err == nil {
		for _, mf := range mfs {
			if mf.GetName() != "controller_runtime_reconcile_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "controller" && l.GetValue() == "microvmmachine" {
						r.reconciles += m.GetCounter().GetValue()
					}
				}
			}
		}
	}
	b.capmvm = r
	b.step("CAPMVM: %d machines provisioned in %s over %v connections", n, secs(r.allReady), r.conns)
	return nil
}

// parallel runs fn(0..n-1) on workers goroutines and returns the first
// error.
func parallel(ctx context.Context, n, workers int, fn func(i int) error) error {
	idx := make(chan int)
	errc := make(chan error, n)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range idx {
				if err := fn(i); err != nil {
					errc <- err
				}
			}
		})
	}
	for i := range n {
		select {
		case idx <- i:
		case <-ctx.Done():
		}
	}
	close(idx)
	wg.Wait()
	close(errc)
	return <-errc
}

// reportCAPMVM prints the CAPMVM table.
func (b *bench) reportCAPMVM(w io.Writer) {
	r := b.capmvm
	if r == nil {
		return
	}
	t := &table{
		title: fmt.Sprintf("7. CAPMVM: %d MicrovmMachines through the controller (envtest API server, flintlockd test doubles)", r.machines),
		head:  []string{"machines", "hosts", "concurrency", "all have providerID", "all provisioned", "per machine p50", "p99", "gRPC connections", "goal", "verdict"},
	}
	t.add(fmt.Sprint(r.machines), fmt.Sprint(r.hosts), fmt.Sprint(r.concurrency), secs(r.allProviderID), secs(r.allReady),
		ms(pct(r.perMachine, 0.5)), ms(pct(r.perMachine, 0.99)), fmt.Sprint(r.conns),
		fmt.Sprintf("≤%s, 1 per host", secs(capmvmGoal)), verdict(r.capmvmMet()))
	t.note("From the first MicrovmMachine created (its Machine and bootstrap data already there, as Cluster API")
	t.note("  makes them) until every machine has spec.providerID and status.initialization.provisioned (its")
	t.note("  microVM CREATED), seen through a watch; the %d creates themselves took %s. The hosts are", r.machines, secs(r.submit))
	t.note("  in-process test doubles of flintlockd that report CREATED at once: the VMs' own work is excluded.")
	t.note("Per host: %v microVMs, %v TCP connections accepted; %d CreateMicroVM calls, %d calls in all;", r.vms, r.conns, r.creates, r.calls)
	t.note("  the pool created %d connections. %.0f MicrovmMachine reconciles (%.1f per machine).", r.poolCreated, r.reconciles, r.reconciles/float64(r.machines))
	a, nm := r.api, float64(r.machines)
	t.note("API writes per machine: %.2f to MicrovmMachines (%.2f metadata/spec, %.2f status; %d of all %d",
		float64(a.mmWrites())/nm, float64(a.mmMeta)/nm, float64(a.mmStatus)/nm, a.mmConflicts, a.mmWrites())
	t.note("  lost an optimistic lock), %.2f with the events; %d requests of the manager in all (counted",
		float64(a.writes)/nm, a.requests)
	t.note("  until a second after the last machine was provisioned). Manager client: --kube-api-qps %.0f,", r.qps)
	t.note("  --kube-api-burst %d (capmvm's defaults: %d, %d).", r.burst, controller.DefaultKubeAPIQPS, controller.DefaultKubeAPIBurst)
	if r.rewatches > 0 {
		t.note("The API server ended the bench's watch early %d time(s); the times of what it missed are", r.rewatches)
		t.note("  when a list found them.")
	}
	t.print(w)
}

func (r *capmvmResult) capmvmMet() bool {
	if r.allReady > capmvmGoal || r.creates != r.machines {
		return false
	}
	for _, c := range r.conns {
		if c != 1 {
			return false
		}
	}
	return true
}

// capmvmSummary adds the CAPMVM rows to the summary table.
func (b *bench) capmvmSummary(t *table) {
	r := b.capmvm
	if r == nil {
		return
	}
	t.add(fmt.Sprintf("CAPMVM: %d machines' microVMs created", r.machines), secs(r.allReady), "≤"+secs(capmvmGoal), verdict(r.allReady <= capmvmGoal))
	one := true
	for _, c := range r.conns {
		one = one && c == 1
	}
	t.add("CAPMVM: gRPC connections per host", fmt.Sprint(r.conns), "1 each", verdict(one))
}

// apiCounter counts the requests a client makes to the API server: all of
// them, the writes, and the writes to MicrovmMachines (metadata and spec,
// or the status subresource) with those refused for a stale
// resourceVersion (409).
type apiCounter struct {
	requests, writes, mmMeta, mmStatus, mmConflicts atomic.Int64
}

// apiCounts is a snapshot of an apiCounter.
type apiCounts struct {
	requests, writes, mmMeta, mmStatus, mmConflicts int64
}

func (c apiCounts) mmWrites() int64 { return c.mmMeta + c.mmStatus }

func (c *apiCounter) snapshot() *apiCounts {
	return &apiCounts{requests: c.requests.Load(), writes: c.writes.Load(), mmMeta: c.mmMeta.Load(),
		mmStatus: c.mmStatus.Load(), mmConflicts: c.mmConflicts.Load()}
}

// wrap is a rest.Config WrapTransport.
func (c *apiCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		c.requests.Add(1)
		write := req.Method != http.MethodGet && req.Method != http.MethodHead
		mm := write && strings.Contains(req.URL.Path, "/microvmmachines/")
		if write {
			c.writes.Add(1)
		}
		if mm {
			if strings.HasSuffix(req.URL.Path, "/status") {
				c.mmStatus.Add(1)
			} else {
				c.mmMeta.Add(1)
			}
		}
		resp, err := rt.RoundTrip(req)
		if mm && err == nil && resp.StatusCode == http.StatusConflict {
			c.mmConflicts.Add(1)
		}
		return resp, err
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }
