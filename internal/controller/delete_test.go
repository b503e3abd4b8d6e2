package controller_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/controller/flintlocktest"
)

func (f *fixture) delete(name string) {
	f.t.Helper()
	mm := f.get(name)
	if mm == nil {
		f.t.Fatalf("%s is gone already", name)
	}
	if err := k8s.Delete(f.ctx, mm); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) gone(name string, timeout time.Duration) {
	f.t.Helper()
	eventually(f.t, timeout, name+" deleted", func() error {
		if mm := f.get(name); mm != nil {
			return fmt.Errorf("still there: finalizers %v, conditions %+v", mm.Finalizers, mm.Status.Conditions)
		}
		return nil
	})
}

func TestDeletion(t *testing.T) {
	f := newFixture(t, fixtureOpts{hosts: []hostSpec{{controlPlane: true, opts: runAtOnce}}, provisioned: true})
	host := f.hosts[0]

	t.Run("a machine that never had a microVM goes at once", func(t *testing.T) {
		f.t = t
		f.machine("never", machineOpts{noBootstrap: true})
		f.condition("never", infrav1.MicrovmReadyCondition, metav1.ConditionFalse, infrav1.WaitingForBootstrapDataReason)
		f.delete("never")
		f.gone("never", 10*time.Second)
		if n := host.Calls("DeleteMicroVM") + host.Calls("GetMicroVM"); n != 0 {
			t.Fatalf("%d calls to the host for a machine without microVM", n)
		}
	})

	t.Run("waits until the host has removed the microVM", func(t *testing.T) {
		f.t = t
		f.machine("vm", machineOpts{})
		_, _, uid := f.created("vm")
		f.wait("vm", "running", vmState(infrav1.VMStateRunning))
		f.delete("vm")
		eventually(t, 10*time.Second, "DeleteMicroVM sent", func() error {
			if vm := host.VM(f.ns, "vm"); vm.GetStatus().GetState() != types.MicroVMStatus_DELETING {
				return fmt.Errorf("microVM state %v", vm.GetStatus().GetState())
			}
			return nil
		})
		mm := f.condition("vm", infrav1.MicrovmReadyCondition, metav1.ConditionFalse, infrav1.MicrovmDeletingReason)
		if mm.DeletionTimestamp.IsZero() || len(mm.Finalizers) != 1 {
			t.Fatalf("deletion %v, finalizers %v", mm.DeletionTimestamp, mm.Finalizers)
		}
		time.Sleep(time.Second)
		if f.get("vm") == nil {
			t.Fatal("the machine went before its microVM")
		}
		if n := host.Calls("DeleteMicroVM"); n != 1 {
			t.Errorf("DeleteMicroVM called %d times, want 1", n)
		}
		host.Remove(uid)
		f.gone("vm", 10*time.Second)
	})
}

// runAtOnce makes hosts whose microVMs are CREATED as soon as asked for.
var runAtOnce = flintlocktest.Options{InitialState: types.MicroVMStatus_CREATED}

func TestDeletionWithUnreachableHost(t *testing.T) {
	f := newFixture(t, fixtureOpts{hosts: []hostSpec{{controlPlane: true, opts: runAtOnce}}, provisioned: true})
	host := f.hosts[0]
	f.machine("lost", machineOpts{})
	f.created("lost")
	f.wait("lost", "running", vmState(infrav1.VMStateRunning))

	// The grace period runs from when the host stopped answering (the
	// HostReachable condition's transition, which has 1 s resolution).
	stopped := time.Now()
	host.Stop()
	f.delete("lost")
	f.condition("lost", infrav1.HostReachableCondition, metav1.ConditionFalse, infrav1.HostUnreachableReason)
	time.Sleep(time.Until(stopped.Add(gracePeriod - 1500*time.Millisecond)))
	if f.get("lost") == nil {
		t.Fatalf("the machine went %s after its host stopped, before the grace period of %s", time.Since(stopped), gracePeriod)
	}
	f.gone("lost", gracePeriod+10*time.Second)
	eventually(t, 10*time.Second, "a Warning event", func() error {
		var events corev1.EventList
		if err := k8s.List(f.ctx, &events, client.InNamespace(f.ns)); err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.InvolvedObject.Name == "lost" && e.Type == corev1.EventTypeWarning && e.Reason == "MicrovmAbandoned" {
				if !strings.Contains(e.Message, host.Addr()) {
					return fmt.Errorf("event message %q does not name the host", e.Message)
				}
				return nil
			}
		}
		return errors.New("no MicrovmAbandoned event")
	})
}
