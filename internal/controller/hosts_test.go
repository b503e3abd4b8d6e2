package controller_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/cluster-api/util/conditions"
	"sigs.k8s.io/controller-runtime/pkg/client"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/internal/controller"
	"github.com/liquidmetal-go/liquidmetal/internal/controller/flintlocktest"
)

// TestOneConnectionPerHost: many machines, many reconciles, and each host
// sees a single TCP connection from the controller.
func TestOneConnectionPerHost(t *testing.T) {
	f := newFixture(t, fixtureOpts{hosts: []hostSpec{{controlPlane: true, opts: runAtOnce}, {controlPlane: true, opts: runAtOnce}}, provisioned: true})
	const n = 12
	for i := range n {
		f.machine(fmt.Sprintf("w-%d", i), machineOpts{deployment: "md"})
	}
	for i := range n {
		f.wait(fmt.Sprintf("w-%d", i), "running", vmState(infrav1.VMStateRunning))
	}
	// Running machines are looked at again every second.
	time.Sleep(2 * time.Second)
	calls := 0
	for _, h := range f.hosts {
		calls += h.Calls("CreateMicroVM") + h.Calls("GetMicroVM") + h.Calls("ListMicroVMs")
		if c := h.Connections(); c != 1 {
			t.Errorf("host %s accepted %d connections, want 1", h.Addr(), c)
		}
	}
	if calls < 2*n {
		t.Fatalf("only %d calls reached the hosts", calls)
	}
	t.Logf("%d calls to 2 hosts over 2 connections", calls)
}

// TestMutualTLSAndTokens: hosts that require a client certificate and
// each its own token, read from the cluster's secrets; a rotated token
// gives a new connection, a wrong one makes the host unreachable.
func TestMutualTLSAndTokens(t *testing.T) {
	pki, err := flintlocktest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := pki.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	hostOpts := func(ip, token string) flintlocktest.Options {
		return flintlocktest.Options{Addr: ip + ":0", TLS: serverTLS, Token: token, InitialState: runAtOnce.InitialState}
	}
	f := newFixture(t, fixtureOpts{
		hosts:       []hostSpec{{controlPlane: true, opts: hostOpts("127.0.0.2", "token-a")}, {controlPlane: true, opts: hostOpts("127.0.0.3", "token-b")}},
		tlsSecret:   "hosts-tls",
		authSecret:  "hosts-auth",
		provisioned: true,
	})
	f.create(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "hosts-tls", Namespace: f.ns},
		Data: map[string][]byte{
			controller.TLSCAKey: pki.CACert, controller.TLSCertKey: pki.ClientCert, controller.TLSKeyKey: pki.ClientKey,
		},
	})
	auth := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "hosts-auth", Namespace: f.ns},
		// Keyed by host address without port.
		Data: map[string][]byte{"127.0.0.2": []byte("token-a"), "127.0.0.3": []byte("token-b")},
	}
	f.create(auth)

	for i := range 4 {
		f.machine(fmt.Sprintf("m-%d", i), machineOpts{deployment: "md"})
	}
	for i := range 4 {
		f.wait(fmt.Sprintf("m-%d", i), "running", vmState(infrav1.VMStateRunning))
	}
	for _, h := range f.hosts {
		if h.Calls("CreateMicroVM") != 2 || h.Refused() != 0 || h.Connections() != 1 {
			t.Fatalf("host %s: %d creates, %d refused calls, %d connections; want 2, 0, 1",
				h.Addr(), h.Calls("CreateMicroVM"), h.Refused(), h.Connections())
		}
	}

	// Rotate host a's token on both sides: the controller dials anew.
	hostA := f.hosts[0]
	base := auth.DeepCopy()
	auth.Data["127.0.0.2"] = []byte("wrong")
	if err := k8s.Patch(f.ctx, auth, client.MergeFrom(base)); err != nil {
		t.Fatal(err)
	}
	var onA string
	for i := range 4 {
		mm := f.get(fmt.Sprintf("m-%d", i))
		if strings.Contains(mm.Spec.ProviderID, hostA.Addr()) {
			onA = mm.Name
		}
	}
	mm := f.condition(onA, infrav1.HostReachableCondition, metav1.ConditionFalse, infrav1.HostUnreachableReason)
	if msg := conditions.GetMessage(mm, infrav1.HostReachableCondition); !strings.Contains(msg, "Unauthenticated") {
		t.Errorf("HostReachable message %q does not say why", msg)
	}
	if hostA.Refused() == 0 || hostA.Connections() != 2 {
		t.Fatalf("host a: %d refused calls, %d connections after the token changed", hostA.Refused(), hostA.Connections())
	}
	if got := f.hosts[1].Connections(); got != 1 {
		t.Errorf("host b: %d connections, want 1 (its credentials did not change)", got)
	}
}
