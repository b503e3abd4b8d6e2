package controller_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	microvmv1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/controller"
	"github.com/liquidmetal-go/liquidmetal/internal/controller/flintlocktest"
	"github.com/liquidmetal-go/liquidmetal/internal/hostclient"
)

// directReconciler reconciles MicrovmMachines when the test says so, with
// an uncached client; the fixtures of these tests are unlabelled, so the
// manager leaves them alone.
func directReconciler() *controller.MicrovmMachineReconciler {
	return &controller.MicrovmMachineReconciler{
		Client: k8s, Hosts: pool, PollInterval: poll, RPCTimeout: rpcTimeout,
	}
}

func reconcileOnce(t *testing.T, f *fixture, r *controller.MicrovmMachineReconciler, name string) ctrl.Result {
	t.Helper()
	res, err := r.Reconcile(f.ctx, ctrl.Request{NamespacedName: client.ObjectKey{Namespace: f.ns, Name: name}})
	if err != nil {
		t.Fatalf("reconcile %s: %v", name, err)
	}
	return res
}

func totalCreates(f *fixture) int {
	n := 0
	for _, h := range f.hosts {
		n += h.Calls("CreateMicroVM")
	}
	return n
}

// TestConcurrentReconcilesCreateOneMicrovm reconciles each new machine
// from several goroutines at once (their first write, the claim, also adds
// the finalizer), against hosts that take 300 ms to create a microVM:
// exactly one CreateMicroVM call and one microVM per machine.
func TestConcurrentReconcilesCreateOneMicrovm(t *testing.T) {
	slow := flintlocktest.Options{CreateDelay: 300 * time.Millisecond}
	f := newFixture(t, fixtureOpts{unmanaged: true, provisioned: true,
		hosts: []hostSpec{{controlPlane: true, opts: slow}, {controlPlane: true, opts: slow}}})
	r := directReconciler()
	const machines, racers = 4, 4
	for i := range machines {
		name := fmt.Sprintf("race-%d", i)
		f.machine(name, machineOpts{deployment: "md"})
		before := totalCreates(f)

		start := make(chan struct{})
		var wg sync.WaitGroup
		errs := make(chan error, racers)
		for range racers {
			wg.Go(func() {
				<-start
				for range 50 {
					res, err := r.Reconcile(f.ctx, ctrl.Request{NamespacedName: client.ObjectKey{Namespace: f.ns, Name: name}})
					if err != nil {
						errs <- err
						return
					}
					if mm := f.get(name); mm.Spec.ProviderID != "" {
						return
					}
					time.Sleep(min(max(res.RequeueAfter, 10*time.Millisecond), 100*time.Millisecond))
				}
				errs <- fmt.Errorf("%s has no provider ID after 50 reconciles", name)
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}

		if n := totalCreates(f) - before; n != 1 {
			t.Fatalf("%s: %d CreateMicroVM calls from %d concurrent reconciles, want 1", name, n, racers)
		}
		var vms []*types.MicroVM
		for _, h := range f.hosts {
			if vm := h.VM(f.ns, name); vm != nil {
				vms = append(vms, vm)
			}
		}
		mm := f.get(name)
		host, uid, err := controller.ParseProviderID(mm.Spec.ProviderID)
		if err != nil || len(vms) != 1 || vms[0].GetSpec().GetUid() != uid || f.host(host).VM(f.ns, name) == nil {
			t.Fatalf("%s: provider ID %s, microVMs %v", name, mm.Spec.ProviderID, vms)
		}
		if _, held := mm.Annotations[controller.CreateAttemptAnnotation]; held {
			t.Errorf("%s: the create attempt annotation stayed after the provider ID was recorded", name)
		}
		if !slices.Equal(mm.Finalizers, []string{infrav1.MachineFinalizer}) {
			t.Errorf("%s: finalizers %v, want the machine finalizer once", name, mm.Finalizers)
		}
	}
}

// TestCreateRecovery covers a reconcile that died between CreateMicroVM
// and recording the provider ID, an attempt still in flight, and a name
// taken by someone else's microVM.
func TestCreateRecovery(t *testing.T) {
	f := newFixture(t, fixtureOpts{unmanaged: true, provisioned: true, hosts: []hostSpec{{controlPlane: true}}})
	r := directReconciler()
	host := f.hosts[0]
	annotate := func(name string, attempt time.Time) *infrav1.MicrovmMachine {
		t.Helper()
		mm := f.get(name)
		base := mm.DeepCopy()
		mm.Annotations = map[string]string{
			controller.HostAnnotation:          host.Addr(),
			controller.CreateAttemptAnnotation: attempt.UTC().Format(time.RFC3339Nano),
		}
		if err := k8s.Patch(f.ctx, mm, client.MergeFrom(base)); err != nil {
			t.Fatal(err)
		}
		return mm
	}
	createOnHost := func(name string, labels map[string]string) string {
		t.Helper()
		cl, err := pool.MicroVM(host.Addr(), hostclient.Credentials{})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := cl.CreateMicroVM(f.ctx, &microvmv1.CreateMicroVMRequest{Microvm: &types.MicroVMSpec{
			Id: name, Namespace: f.ns, Labels: labels, Vcpu: 1, MemoryInMb: 1024,
		}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetMicrovm().GetSpec().GetUid()
	}

	t.Run("adopts the microVM of a crashed attempt", func(t *testing.T) {
		f.t = t
		f.machine("crashed", machineOpts{})
		mm := annotate("crashed", time.Now())
		uid := createOnHost("crashed", map[string]string{controller.MachineUIDLabel: string(mm.UID)})
		creates := host.Calls("CreateMicroVM")
		reconcileOnce(t, f, r, "crashed")
		if got := f.get("crashed").Spec.ProviderID; got != controller.ProviderID(host.Addr(), uid) {
			t.Fatalf("provider ID %q, want the existing microVM %s", got, uid)
		}
		if host.Calls("CreateMicroVM") != creates {
			t.Fatal("CreateMicroVM was called again")
		}
		if fin := f.get("crashed").Finalizers; !slices.Equal(fin, []string{infrav1.MachineFinalizer}) {
			t.Fatalf("finalizers %v: the provider ID's write adds the finalizer when no claim did", fin)
		}
	})

	t.Run("waits for an attempt in flight", func(t *testing.T) {
		f.t = t
		f.machine("inflight", machineOpts{})
		annotate("inflight", time.Now())
		creates := host.Calls("CreateMicroVM")
		if res := reconcileOnce(t, f, r, "inflight"); res.RequeueAfter <= 0 {
			t.Fatalf("result %+v, want a requeue while the attempt holds", res)
		}
		if host.Calls("CreateMicroVM") != creates || f.get("inflight").Spec.ProviderID != "" {
			t.Fatal("created while another attempt held")
		}
		// The attempt expired without a microVM: a new attempt creates it.
		annotate("inflight", time.Now().Add(-time.Hour))
		reconcileOnce(t, f, r, "inflight")
		if host.Calls("CreateMicroVM") != creates+1 || f.get("inflight").Spec.ProviderID == "" {
			t.Fatal("not created after the attempt expired")
		}
	})

	t.Run("name taken by a microVM of another machine", func(t *testing.T) {
		f.t = t
		createOnHost("taken", map[string]string{controller.MachineUIDLabel: "someone-else"})
		f.machine("taken", machineOpts{})
		reconcileOnce(t, f, r, "taken")
		mm := f.get("taken")
		if ptr.Deref(mm.Status.FailureReason, "") != infrav1.FailureReasonCreateError || mm.Spec.ProviderID != "" {
			t.Fatalf("status %+v, provider ID %q", mm.Status, mm.Spec.ProviderID)
		}
	})
}

// TestUnreachableHostWhileCreating: the create fails, the machine says
// why, and creates once the host is back.
func TestUnreachableHostWhileCreating(t *testing.T) {
	f := newFixture(t, fixtureOpts{unmanaged: true, provisioned: true, hosts: []hostSpec{{controlPlane: true}}})
	r := directReconciler()
	host := f.hosts[0]
	host.Stop()
	f.machine("m", machineOpts{})
	res := reconcileOnce(t, f, r, "m")
	mm := f.get("m")
	if res.RequeueAfter != poll || mm.Spec.ProviderID != "" {
		t.Fatalf("result %+v, provider ID %q", res, mm.Spec.ProviderID)
	}
	for _, c := range mm.Status.Conditions {
		if c.Type == infrav1.HostReachableCondition && c.Status != "False" {
			t.Fatalf("HostReachable = %+v", c)
		}
	}
	if err := host.Restart(); err != nil {
		t.Fatal(err)
	}
	// The failed attempt holds its lease (the host might have created the
	// microVM); the next attempt looks first, then creates.
	annotate := f.get("m")
	base := annotate.DeepCopy()
	annotate.Annotations[controller.CreateAttemptAnnotation] = time.Now().Add(-time.Hour).Format(time.RFC3339Nano)
	if err := k8s.Patch(context.Background(), annotate, client.MergeFrom(base)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "created once the host is back", func() error {
		if _, err := r.Reconcile(f.ctx, ctrl.Request{NamespacedName: client.ObjectKey{Namespace: f.ns, Name: "m"}}); err != nil {
			return err
		}
		if f.get("m").Spec.ProviderID == "" {
			return fmt.Errorf("no provider ID")
		}
		return nil
	})
	if n := host.Calls("CreateMicroVM"); n != 1 {
		t.Fatalf("%d CreateMicroVM calls reached the host, want 1", n)
	}
}
