package controller_test

import (
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"
	"sigs.k8s.io/controller-runtime/pkg/client"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/internal/controller"
)

// writeLog records the writes a client sends to the API server, as
// "PATCH microvmmachines" or "PATCH microvmmachines/status".
type writeLog struct {
	mu     sync.Mutex
	writes []string
}

func (l *writeLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.writes
	l.writes = nil
	return w
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// countingReconciler is a directReconciler whose (uncached) client logs
// its writes.
func countingReconciler(t *testing.T) (*controller.MicrovmMachineReconciler, *writeLog) {
	t.Helper()
	log := &writeLog{}
	c := rest.CopyConfig(cfg)
	c.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(req *http.Request) (*http.Response, error) {
			if req.Method != http.MethodGet {
				// .../namespaces/<ns>/<resource>/<name>[/<subresource>]
				parts := strings.Split(req.URL.Path, "/namespaces/")
				what := parts[len(parts)-1]
				if f := strings.SplitN(what, "/", 4); len(f) >= 3 {
					what = f[1]
					if len(f) == 4 {
						what += "/" + f[3]
					}
				}
				log.mu.Lock()
				log.writes = append(log.writes, req.Method+" "+what)
				log.mu.Unlock()
			}
			return rt.RoundTrip(req)
		})
	})
	k, err := client.New(c, client.Options{Scheme: controller.NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	return &controller.MicrovmMachineReconciler{Client: k, Hosts: pool, PollInterval: poll, RPCTimeout: rpcTimeout}, log
}

// TestWritesPerMachine counts the API writes of a machine's reconciles: a
// machine whose microVM is created at once costs the claim (with the
// finalizer), the provider ID and one status write; a waiting machine the
// finalizer and its status; and reconciling again without news writes
// nothing (no condition churns).
func TestWritesPerMachine(t *testing.T) {
	f := newFixture(t, fixtureOpts{unmanaged: true, provisioned: true, hosts: []hostSpec{{controlPlane: true, opts: runAtOnce}}})
	r, log := countingReconciler(t)
	again := func(name string) {
		t.Helper()
		for range 3 {
			reconcileOnce(t, f, r, name)
		}
		if w := log.take(); len(w) != 0 {
			t.Errorf("%s: reconciling again without news wrote %v", name, w)
		}
	}

	f.machine("fast", machineOpts{})
	reconcileOnce(t, f, r, "fast")
	want := []string{"PATCH microvmmachines", "PATCH microvmmachines", "PATCH microvmmachines/status"}
	if w := log.take(); !slices.Equal(w, want) {
		t.Errorf("the create's writes: %v, want %v (claim with finalizer, provider ID, status)", w, want)
	}
	mm := f.get("fast")
	if mm.Spec.ProviderID == "" || !ptr.Deref(mm.Status.Initialization.Provisioned, false) ||
		!slices.Contains(mm.Finalizers, infrav1.MachineFinalizer) {
		t.Fatalf("after one reconcile: provider ID %q, finalizers %v, status %+v", mm.Spec.ProviderID, mm.Finalizers, mm.Status)
	}
	for _, c := range []string{infrav1.ReadyCondition, infrav1.MicrovmReadyCondition, infrav1.HostReachableCondition} {
		if !conditions.IsTrue(mm, c) {
			t.Errorf("%s = %+v", c, conditions.Get(mm, c))
		}
	}
	for _, c := range mm.Status.Conditions {
		if c.ObservedGeneration != mm.Generation {
			t.Errorf("%s observed generation %d, the machine is at %d", c.Type, c.ObservedGeneration, mm.Generation)
		}
	}
	if c := conditions.Get(mm, infrav1.PausedCondition); c == nil || c.Status != metav1.ConditionFalse {
		t.Errorf("Paused = %+v", c)
	}
	again("fast")

	f.machine("waits", machineOpts{noBootstrap: true})
	reconcileOnce(t, f, r, "waits")
	want = []string{"PATCH microvmmachines", "PATCH microvmmachines/status"}
	if w := log.take(); !slices.Equal(w, want) {
		t.Errorf("a waiting machine's writes: %v, want %v (finalizer, then status)", w, want)
	}
	mm = f.get("waits")
	if !slices.Contains(mm.Finalizers, infrav1.MachineFinalizer) || conditions.GetReason(mm, infrav1.MicrovmReadyCondition) != infrav1.WaitingForBootstrapDataReason {
		t.Fatalf("waiting machine: finalizers %v, conditions %+v", mm.Finalizers, mm.Status.Conditions)
	}
	again("waits")
}

// TestPausedMachine: a machine of a paused Cluster only says so, then is
// created once the Cluster resumes.
func TestPausedMachine(t *testing.T) {
	f := newFixture(t, fixtureOpts{unmanaged: true, provisioned: true, hosts: []hostSpec{{controlPlane: true, opts: runAtOnce}}})
	r, log := countingReconciler(t)
	pause := func(p bool) {
		t.Helper()
		c := &clusterv1.Cluster{}
		if err := k8s.Get(f.ctx, client.ObjectKeyFromObject(f.cluster), c); err != nil {
			t.Fatal(err)
		}
		base := c.DeepCopy()
		c.Spec.Paused = ptr.To(p)
		if err := k8s.Patch(f.ctx, c, client.MergeFrom(base)); err != nil {
			t.Fatal(err)
		}
	}
	pause(true)
	f.machine("p", machineOpts{})
	reconcileOnce(t, f, r, "p")
	reconcileOnce(t, f, r, "p")
	if w := log.take(); !slices.Equal(w, []string{"PATCH microvmmachines/status"}) {
		t.Errorf("writes while paused: %v, want the Paused condition only", w)
	}
	mm := f.get("p")
	c := conditions.Get(mm, infrav1.PausedCondition)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != clusterv1.PausedReason || !strings.Contains(c.Message, "Cluster spec.paused") {
		t.Fatalf("Paused = %+v", c)
	}
	if len(mm.Finalizers) != 0 || mm.Annotations[controller.HostAnnotation] != "" || f.hosts[0].Calls("CreateMicroVM") != 0 {
		t.Fatalf("a paused machine was worked on: finalizers %v, annotations %v", mm.Finalizers, mm.Annotations)
	}

	pause(false)
	reconcileOnce(t, f, r, "p")
	mm = f.get("p")
	if mm.Spec.ProviderID == "" || !conditions.IsFalse(mm, infrav1.PausedCondition) {
		t.Fatalf("after resuming: provider ID %q, conditions %+v", mm.Spec.ProviderID, mm.Status.Conditions)
	}
}
