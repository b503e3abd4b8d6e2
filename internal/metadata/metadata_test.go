package metadata

import (
	"bytes"
	"encoding/base64"
	"errors"
	"reflect"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/liquidmetal-go/liquidmetal/api/types"
)

const testUID = "01JD6X0Q6Y4M3T6R0C9P2N5K7W"

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func yamlMap(t *testing.T, doc []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal(doc, &m); err != nil {
		t.Fatalf("not YAML: %v\n%s", err, doc)
	}
	return m
}

func TestDocuments(t *testing.T) {
	dhcp := &types.NetworkInterface{DeviceId: "eth0", Type: types.NetworkInterface_TAP, GuestMac: proto.String("AA:BB:CC:00:11:22")}
	static := &types.NetworkInterface{
		DeviceId: "eth1", Type: types.NetworkInterface_MACVTAP, GuestMac: proto.String("02:00:00:00:00:02"),
		Address: &types.StaticAddress{Address: "192.168.10.5/24", Gateway: proto.String("192.168.10.1"), Nameservers: []string{"1.1.1.1", "9.9.9.9"}},
	}
	static6 := &types.NetworkInterface{
		DeviceId: "eth2", GuestMac: proto.String("02:00:00:00:00:03"),
		Address: &types.StaticAddress{Address: "fd00::5/64", Gateway: proto.String("fd00::1")},
	}
	noMAC := &types.NetworkInterface{DeviceId: "eth3", Type: types.NetworkInterface_TAP}

	spec := func(md map[string]string, addNet bool, ifaces ...*types.NetworkInterface) *types.MicroVMSpec {
		return &types.MicroVMSpec{
			Id: "vm1", Namespace: "ns1", Uid: proto.String(testUID),
			Kernel:     &types.Kernel{Image: "kernel:1", AddNetworkConfig: addNet},
			Interfaces: ifaces,
			Metadata:   md,
		}
	}

	tests := []struct {
		name    string
		spec    *types.MicroVMSpec
		wantErr error
		check   func(t *testing.T, docs map[string][]byte)
	}{
		{
			name: "no metadata: meta-data generated, empty cloud-config user-data",
			spec: spec(nil, false),
			check: func(t *testing.T, docs map[string][]byte) {
				md := yamlMap(t, docs[MetaData])
				want := map[string]any{
					"instance_id": testUID, "instance-id": testUID,
					"local_hostname": "vm1", "local-hostname": "vm1",
				}
				if !reflect.DeepEqual(md, want) {
					t.Errorf("meta-data = %v, want %v", md, want)
				}
				if !bytes.Equal(docs[UserData], emptyUserData) {
					t.Errorf("user-data = %q, want %q", docs[UserData], emptyUserData)
				}
				if _, ok := docs[NetworkConfig]; ok {
					t.Error("network-config generated without add_network_config")
				}
				if len(docs) != 2 {
					t.Errorf("got %d documents, want meta-data and user-data", len(docs))
				}
			},
		},
		{
			name: "instance_id added, other keys kept with their values",
			spec: spec(map[string]string{
				MetaData: b64("local_hostname: host-a\nplatform: liquid_metal\nvm_host: node1\nbig: 12345678901234567890\nratio: 0.5\nnested: {a: [1, 2]}\n"),
			}, false),
			check: func(t *testing.T, docs map[string][]byte) {
				md := yamlMap(t, docs[MetaData])
				for k, v := range map[string]any{
					"instance_id": testUID, "instance-id": testUID,
					"local_hostname": "host-a", "local-hostname": "host-a",
					"platform": "liquid_metal", "vm_host": "node1", "ratio": 0.5,
				} {
					if md[k] != v {
						t.Errorf("meta-data[%s] = %v, want %v", k, md[k], v)
					}
				}
				if !reflect.DeepEqual(md["nested"], map[string]any{"a": []any{float64(1), float64(2)}}) {
					t.Errorf("meta-data nested = %v", md["nested"])
				}
				// Large integers survive the round trip digit for digit.
				if !bytes.Contains(docs[MetaData], []byte("big: 12345678901234567890")) {
					t.Errorf("big integer changed:\n%s", docs[MetaData])
				}
			},
		},
		{
			name: "client instance_id is not overwritten",
			spec: spec(map[string]string{MetaData: b64("instance_id: mine\n")}, false),
			check: func(t *testing.T, docs map[string][]byte) {
				md := yamlMap(t, docs[MetaData])
				if md["instance_id"] != "mine" || md["instance-id"] != "mine" {
					t.Errorf("meta-data = %v, want instance_id and instance-id \"mine\"", md)
				}
				if _, ok := md["local-hostname"]; ok {
					t.Errorf("local-hostname invented: %v", md)
				}
			},
		},
		{
			name: "complete meta-data and user-data pass through byte for byte",
			spec: spec(map[string]string{
				MetaData:    b64("# keep me\ninstance_id: a\ninstance-id: b\n"),
				UserData:    b64("#!/bin/sh\necho hi\n"),
				VendorData:  b64(""),
				"extra.txt": base64.RawStdEncoding.EncodeToString([]byte("no padding")),
			}, false),
			check: func(t *testing.T, docs map[string][]byte) {
				for name, want := range map[string]string{
					MetaData: "# keep me\ninstance_id: a\ninstance-id: b\n", UserData: "#!/bin/sh\necho hi\n",
					VendorData: "", "extra.txt": "no padding",
				} {
					got, ok := docs[name]
					if !ok || string(got) != want {
						t.Errorf("%s = %q (present %v), want %q", name, got, ok, want)
					}
				}
			},
		},
		{
			name: "empty meta-data document gets the keys",
			spec: spec(map[string]string{MetaData: b64("")}, false),
			check: func(t *testing.T, docs map[string][]byte) {
				md := yamlMap(t, docs[MetaData])
				if md["instance_id"] != testUID || md["instance-id"] != testUID {
					t.Errorf("meta-data = %v", md)
				}
			},
		},
		{
			name: "network-config generated: dhcp, static v4 and v6, no-MAC skipped",
			spec: spec(nil, true, dhcp, static, static6, noMAC),
			check: func(t *testing.T, docs map[string][]byte) {
				nc := yamlMap(t, docs[NetworkConfig])
				want := map[string]any{
					"version": float64(2),
					"ethernets": map[string]any{
						"eth0": map[string]any{
							"match": map[string]any{"macaddress": "aa:bb:cc:00:11:22"},
							"dhcp4": true,
						},
						"eth1": map[string]any{
							"match":       map[string]any{"macaddress": static.GetGuestMac()},
							"addresses":   []any{static.Address.Address},
							"routes":      []any{map[string]any{"to": "0.0.0.0/0", "via": static.Address.GetGateway()}},
							"nameservers": map[string]any{"addresses": []any{"1.1.1.1", "9.9.9.9"}},
						},
						"eth2": map[string]any{
							"match":     map[string]any{"macaddress": static6.GetGuestMac()},
							"addresses": []any{static6.Address.Address},
							"routes":    []any{map[string]any{"to": "::/0", "via": static6.Address.GetGateway()}},
						},
					},
				}
				if !reflect.DeepEqual(nc, want) {
					t.Errorf("network-config:\n%s\nwant %v", docs[NetworkConfig], want)
				}
			},
		},
		{
			name: "static address without gateway has no route",
			spec: spec(nil, true, &types.NetworkInterface{DeviceId: "eth0", GuestMac: proto.String("02:00:00:00:00:09"),
				Address: &types.StaticAddress{Address: "10.0.0.2/8"}}),
			check: func(t *testing.T, docs map[string][]byte) {
				eth := yamlMap(t, docs[NetworkConfig])["ethernets"].(map[string]any)["eth0"].(map[string]any)
				if _, ok := eth["routes"]; ok {
					t.Errorf("routes without a gateway: %v", eth)
				}
				if _, ok := eth["dhcp4"]; ok {
					t.Errorf("dhcp4 on a static interface: %v", eth)
				}
			},
		},
		{
			name: "client network-config wins over add_network_config",
			spec: spec(map[string]string{NetworkConfig: b64("version: 1\n")}, true, dhcp),
			check: func(t *testing.T, docs map[string][]byte) {
				if string(docs[NetworkConfig]) != "version: 1\n" {
					t.Errorf("network-config = %q", docs[NetworkConfig])
				}
			},
		},
		{
			name: "add_network_config without any guest MAC: no network-config",
			spec: spec(nil, true, noMAC),
			check: func(t *testing.T, docs map[string][]byte) {
				if nc, ok := docs[NetworkConfig]; ok {
					t.Errorf("network-config = %q", nc)
				}
			},
		},
		{name: "bad base64", spec: spec(map[string]string{UserData: "not base64!"}, false), wantErr: errdefs.ErrInvalidArgument},
		{name: "unsafe file name", spec: spec(map[string]string{"../etc": b64("x")}, false), wantErr: errdefs.ErrInvalidArgument},
		{name: "meta-data not a mapping", spec: spec(map[string]string{MetaData: b64("- a\n- b\n")}, false), wantErr: errdefs.ErrInvalidArgument},
		{name: "meta-data not YAML", spec: spec(map[string]string{MetaData: b64("a: [1\n")}, false), wantErr: errdefs.ErrInvalidArgument},
		{name: "no uid", spec: &types.MicroVMSpec{Id: "vm1"}, wantErr: errdefs.ErrInvalidArgument},
		{name: "nil spec", spec: nil, wantErr: errdefs.ErrInvalidArgument},
		{
			name: "bad static address",
			spec: spec(nil, true, &types.NetworkInterface{DeviceId: "eth0", GuestMac: proto.String("02:00:00:00:00:09"),
				Address: &types.StaticAddress{Address: "10.0.0.300/8"}}),
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "bad guest MAC",
			spec:    spec(nil, true, &types.NetworkInterface{DeviceId: "eth0", GuestMac: proto.String("zz")}),
			wantErr: errdefs.ErrInvalidArgument,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			docs, err := Documents(tt.spec)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Documents: %v", err)
			}
			for _, required := range []string{MetaData, UserData} {
				if _, ok := docs[required]; !ok {
					t.Errorf("no %s", required)
				}
			}
			tt.check(t, docs)
		})
	}
}

// The spec's base64 values are not modified by Documents.
func TestDocumentsLeavesSpecAlone(t *testing.T) {
	s := &types.MicroVMSpec{Id: "vm", Uid: proto.String(testUID), Metadata: map[string]string{MetaData: b64("a: 1\n")}}
	before := proto.Clone(s)
	if _, err := Documents(s); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(before, s) {
		t.Errorf("spec changed: %v", s)
	}
}
