package controller_test

import (
	"errors"
	"fmt"
	"net"
	"reflect"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"
	"sigs.k8s.io/controller-runtime/pkg/client"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
)

func (f *fixture) getCluster() *infrav1.MicrovmCluster {
	f.t.Helper()
	mc := &infrav1.MicrovmCluster{}
	if err := k8s.Get(f.ctx, client.ObjectKeyFromObject(f.mc), mc); err != nil {
		if client.IgnoreNotFound(err) == nil {
			return nil
		}
		f.t.Fatal(err)
	}
	return mc
}

// clusterCondition waits for a MicrovmCluster condition.
func (f *fixture) clusterCondition(condType string, st metav1.ConditionStatus, reason string) *infrav1.MicrovmCluster {
	f.t.Helper()
	var mc *infrav1.MicrovmCluster
	eventually(f.t, 20*time.Second, fmt.Sprintf("MicrovmCluster %s=%s/%s", condType, st, reason), func() error {
		mc = f.getCluster()
		if mc == nil {
			return errors.New("gone")
		}
		c := conditions.Get(mc, condType)
		if c == nil || c.Status != st || c.Reason != reason {
			return fmt.Errorf("%s = %+v", condType, c)
		}
		return nil
	})
	return mc
}

// listen accepts and drops connections on loopback: a control-plane
// endpoint that answers.
func listen(t *testing.T) (net.Listener, clusterv1.APIEndpoint) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l, clusterv1.APIEndpoint{Host: "127.0.0.1", Port: int32(l.Addr().(*net.TCPAddr).Port)}
}

func TestClusterProvisionedWithFailureDomainsAndEndpointCheck(t *testing.T) {
	l, ep := listen(t)
	f := newFixture(t, fixtureOpts{
		hosts:    []hostSpec{{controlPlane: true, endpoint: "192.0.2.1:9090"}, {controlPlane: false, endpoint: "192.0.2.2:9090"}},
		endpoint: ep,
	})
	f.clusterCondition(infrav1.ControlPlaneEndpointReachableCondition, metav1.ConditionTrue, infrav1.ControlPlaneEndpointReachableReason)
	var mc *infrav1.MicrovmCluster
	eventually(t, 10*time.Second, "status written", func() error {
		if mc = f.getCluster(); len(mc.Status.FailureDomains) == 0 {
			return errors.New("no failure domains yet")
		}
		return nil
	})
	if !slices.Contains(mc.Finalizers, infrav1.ClusterFinalizer) {
		t.Errorf("finalizers = %v", mc.Finalizers)
	}
	if !ptr.Deref(mc.Status.Initialization.Provisioned, false) || !mc.Status.Ready {
		t.Errorf("provisioned = %v, ready = %v", mc.Status.Initialization.Provisioned, mc.Status.Ready)
	}
	if !conditions.IsTrue(mc, infrav1.ReadyCondition) {
		t.Errorf("Ready = %+v", conditions.Get(mc, infrav1.ReadyCondition))
	}
	want := []clusterv1.FailureDomain{
		{Name: "192.0.2.1:9090", ControlPlane: ptr.To(true), Attributes: map[string]string{"name": "host-0"}},
		{Name: "192.0.2.2:9090", ControlPlane: ptr.To(false), Attributes: map[string]string{"name": "host-1"}},
	}
	if !reflect.DeepEqual(mc.Status.FailureDomains, want) {
		t.Errorf("failure domains = %+v, want %+v", mc.Status.FailureDomains, want)
	}

	// The API server goes away: the condition follows, provisioning stays.
	l.Close()
	mc = f.clusterCondition(infrav1.ControlPlaneEndpointReachableCondition, metav1.ConditionFalse, infrav1.ControlPlaneEndpointUnreachableReason)
	if !ptr.Deref(mc.Status.Initialization.Provisioned, false) || !conditions.IsFalse(mc, infrav1.ReadyCondition) {
		t.Errorf("after the endpoint went away: provisioned %v, Ready %+v", mc.Status.Initialization.Provisioned,
			conditions.Get(mc, infrav1.ReadyCondition))
	}
}

func TestClusterUsesTheClustersEndpoint(t *testing.T) {
	f := newFixture(t, fixtureOpts{hosts: []hostSpec{{controlPlane: true, endpoint: "192.0.2.1:9090"}}})
	mc := f.clusterCondition(infrav1.ControlPlaneEndpointReachableCondition, metav1.ConditionFalse, infrav1.WaitingForControlPlaneEndpointReason)
	if mc.Status.Initialization.Provisioned != nil || mc.Status.Ready {
		t.Fatalf("provisioned without an endpoint: %+v", mc.Status)
	}
	_, ep := listen(t)
	base := f.cluster.DeepCopy()
	f.cluster.Spec.ControlPlaneEndpoint = ep
	if err := k8s.Patch(f.ctx, f.cluster, client.MergeFrom(base)); err != nil {
		t.Fatal(err)
	}
	f.clusterCondition(infrav1.ControlPlaneEndpointReachableCondition, metav1.ConditionTrue, infrav1.ControlPlaneEndpointReachableReason)
	// The helper patches conditions and the rest of the status apart.
	eventually(t, 10*time.Second, "provisioned with the Cluster's endpoint", func() error {
		if mc := f.getCluster(); !ptr.Deref(mc.Status.Initialization.Provisioned, false) || !mc.Status.Ready {
			return fmt.Errorf("status %+v", mc.Status)
		}
		return nil
	})
}

func TestClusterPause(t *testing.T) {
	_, ep := listen(t)
	f := newFixture(t, fixtureOpts{hosts: []hostSpec{{controlPlane: true, endpoint: "192.0.2.1:9090"}}, endpoint: ep})
	f.clusterCondition(infrav1.ControlPlaneEndpointReachableCondition, metav1.ConditionTrue, infrav1.ControlPlaneEndpointReachableReason)

	setPaused := func(p bool) {
		base := f.cluster.DeepCopy()
		f.cluster.Spec.Paused = ptr.To(p)
		if err := k8s.Patch(f.ctx, f.cluster, client.MergeFrom(base)); err != nil {
			t.Fatal(err)
		}
	}
	setPaused(true)
	f.clusterCondition(infrav1.PausedCondition, metav1.ConditionTrue, clusterv1.PausedReason)

	// A new host is not published while paused.
	mc := f.getCluster()
	base := mc.DeepCopy()
	mc.Spec.Placement.StaticPool.Hosts = append(mc.Spec.Placement.StaticPool.Hosts, infrav1.Host{Endpoint: "192.0.2.9:9090"})
	if err := k8s.Patch(f.ctx, mc, client.MergeFrom(base)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if got := f.getCluster().Status.FailureDomains; len(got) != 1 {
		t.Fatalf("failure domains changed while paused: %+v", got)
	}

	setPaused(false)
	f.clusterCondition(infrav1.PausedCondition, metav1.ConditionFalse, clusterv1.NotPausedReason)
	eventually(t, 10*time.Second, "the new host published", func() error {
		if got := f.getCluster().Status.FailureDomains; len(got) != 2 {
			return fmt.Errorf("failure domains %+v", got)
		}
		return nil
	})
}

func TestClusterDeletionWaitsForMachines(t *testing.T) {
	_, ep := listen(t)
	f := newFixture(t, fixtureOpts{hosts: []hostSpec{{controlPlane: true}}, endpoint: ep})
	f.clusterCondition(infrav1.ControlPlaneEndpointReachableCondition, metav1.ConditionTrue, infrav1.ControlPlaneEndpointReachableReason)
	f.machine("m0", machineOpts{noBootstrap: true})
	f.condition("m0", infrav1.MicrovmReadyCondition, metav1.ConditionFalse, infrav1.WaitingForClusterInfrastructureReadyReason)

	if err := k8s.Delete(f.ctx, f.getCluster()); err != nil {
		t.Fatal(err)
	}
	mc := f.clusterCondition(infrav1.ReadyCondition, metav1.ConditionFalse, infrav1.DeletingReason)
	if c := conditions.Get(mc, infrav1.ReadyCondition); c.Message != "Waiting for 1 MicrovmMachines to be deleted" {
		t.Errorf("Ready message = %q", c.Message)
	}
	if err := k8s.Delete(f.ctx, f.get("m0")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "MicrovmCluster gone", func() error {
		if f.getCluster() != nil {
			return errors.New("still there")
		}
		return nil
	})
}
