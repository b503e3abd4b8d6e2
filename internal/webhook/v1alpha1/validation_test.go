package v1alpha1

import (
	"context"
	"fmt"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
)

// The CRD schema already refuses a placement without exactly one pool, so
// the API server never sends such an object to the webhook; the validator
// refuses it on its own as well (for a server without the CEL rule).
func TestPlacementRequired(t *testing.T) {
	v := &MicrovmClusterCustomValidator{}
	for name, tc := range map[string]struct {
		placement infrav1.Placement
		want      string
	}{
		"none":      {infrav1.Placement{}, "spec.placement.staticPool: Required value: a placement is required"},
		"both":      {infrav1.Placement{StaticPool: &infrav1.HostPool{}, DynamicPool: &infrav1.HostPool{}}, "set exactly one of staticPool or dynamicPool"},
		"no hosts":  {infrav1.Placement{StaticPool: &infrav1.HostPool{}}, "spec.placement.staticPool.hosts: Required value: at least one flintlock host is required"},
		"empty ep":  {infrav1.Placement{StaticPool: &infrav1.HostPool{Hosts: []infrav1.Host{{}}}}, "spec.placement.staticPool.hosts[0].endpoint: Required value"},
		"duplicate": {infrav1.Placement{StaticPool: &infrav1.HostPool{Hosts: []infrav1.Host{{Endpoint: "a:1"}, {Endpoint: "a:1"}}}}, `spec.placement.staticPool.hosts[1].endpoint: Duplicate value: "a:1 (also hosts[0])"`},
	} {
		c := &infrav1.MicrovmCluster{Spec: infrav1.MicrovmClusterSpec{Placement: tc.placement}}
		c.Name = "c"
		_, err := v.ValidateCreate(context.Background(), c)
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want Invalid with %q", name, err, tc.want)
		}
	}
}

func TestDefaultGuestMAC(t *testing.T) {
	seen := map[string]string{}
	for _, ns := range []string{"default", "team-a"} {
		for _, name := range []string{"m1", "m2", "cluster-md-0-abcde"} {
			for i := range 4 {
				mac := DefaultGuestMAC(ns, name, i)
				checkGuestMAC(t, fmt.Sprintf("%s/%s[%d]", ns, name, i), mac)
				if mac != DefaultGuestMAC(ns, name, i) {
					t.Errorf("%s/%s[%d]: not deterministic", ns, name, i)
				}
				key := fmt.Sprintf("%s/%s[%d]", ns, name, i)
				if other, dup := seen[mac]; dup {
					t.Errorf("%s and %s share %s", key, other, mac)
				}
				seen[mac] = key
			}
		}
	}
	// Namespace and name are separated: "a"+"bc" is not "ab"+"c".
	if DefaultGuestMAC("a", "bc", 0) == DefaultGuestMAC("ab", "c", 0) {
		t.Error("namespace/name boundary is ambiguous")
	}
}

// A derived address that a user already gave another interface is stepped
// around.
func TestDefaultGuestMACsAvoidUserAddress(t *testing.T) {
	taken := DefaultGuestMAC("ns", "m", 1)
	s := &infrav1.MicrovmSpec{NetworkInterfaces: []infrav1.NetworkInterface{
		{GuestDeviceName: "eth0", GuestMAC: taken},
		{GuestDeviceName: "eth1"},
	}}
	if !defaultGuestMACs("ns", "m", s) {
		t.Fatal("nothing defaulted")
	}
	if got := s.NetworkInterfaces[1].GuestMAC; got == taken || got == "" {
		t.Errorf("eth1 got %q, the address eth0 holds is %s", got, taken)
	}
	if s.NetworkInterfaces[0].GuestMAC != taken {
		t.Errorf("user address changed to %s", s.NetworkInterfaces[0].GuestMAC)
	}
	if defaultGuestMACs("ns", "m", s) {
		t.Error("defaulting twice changed something")
	}
}
