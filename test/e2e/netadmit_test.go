package e2e

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// TestInterfaceAdmission: an interface this host cannot give a device (an
// unknown bridge, a macvtap without a parent) or a duplicate MAC is refused
// by CreateMicroVM with the field named, and nothing is stored or created.
func TestInterfaceAdmission(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	cases := []struct {
		name   string
		ifaces []*types.NetworkInterface
		code   codes.Code
		want   []string
	}{
		{"unknown bridge", []*types.NetworkInterface{{
			DeviceId: "eth0", Type: types.NetworkInterface_TAP,
			Overrides: &types.NetworkOverrides{BridgeName: proto.String("nosuchbr0")},
		}}, codes.FailedPrecondition, []string{"interface", "nosuchbr0", "not found"}},
		{"macvtap without parent", []*types.NetworkInterface{{
			DeviceId: "eth0", Type: types.NetworkInterface_MACVTAP,
		}}, codes.FailedPrecondition, []string{"interface", "parent"}},
		{"duplicate MAC", []*types.NetworkInterface{
			{DeviceId: "eth0", Type: types.NetworkInterface_TAP, GuestMac: proto.String("02:00:00:00:00:07")},
			{DeviceId: "eth1", Type: types.NetworkInterface_TAP, GuestMac: proto.String("02:00:00:00:00:07")},
		}, codes.InvalidArgument, []string{"interfaces[1]", "duplicate"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := spec("netadmit-"+strings.ReplaceAll(c.name, " ", "-"), "unused")
			s.Interfaces = c.ifaces
			_, err := d.Client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: s})
			st, _ := status.FromError(err)
			if st.Code() != c.code {
				t.Fatalf("want %v, got %v", c.code, err)
			}
			for _, w := range c.want {
				if !strings.Contains(st.Message(), w) {
					t.Errorf("message %q lacks %q", st.Message(), w)
				}
			}
		})
	}
	list, err := d.Client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{})
	if err != nil || len(list.GetMicrovm()) != 0 {
		t.Fatalf("refused creates stored VMs: %v (%v)", list.GetMicrovm(), err)
	}
}
