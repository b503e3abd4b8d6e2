package validate

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

var testProviders = []string{"qemu", "firecracker"}

// validSpec is a spec using every feature, valid as is.
func validSpec() *types.MicroVMSpec {
	return &types.MicroVMSpec{
		Id:         "vm-1",
		Namespace:  "team-a",
		Labels:     map[string]string{"app": "web", "example.com/tier": "front_end.1"},
		Vcpu:       2,
		MemoryInMb: 1024,
		Kernel: &types.Kernel{
			Image:    "registry.example.com/liquidmetal/kernel:6.1",
			Filename: proto.String("boot/vmlinux"),
			Cmdline:  map[string]string{"console": "ttyS0", "quiet": "", "ip": "dhcp"},
		},
		Initrd: &types.Initrd{Image: "registry.example.com:5000/initrd@sha256:" + strings.Repeat("a", 64), Filename: proto.String("/initrd.img")},
		RootVolume: &types.Volume{
			Id:     "root",
			Source: &types.VolumeSource{ContainerSource: proto.String("ubuntu:22.04")},
		},
		AdditionalVolumes: []*types.Volume{
			{Id: "data", SizeInMb: proto.Int32(2048), MountPoint: proto.String("/mnt/data"),
				PartitionId: proto.String("1"), Source: &types.VolumeSource{ContainerSource: proto.String("alpine")}},
			{Id: "shared", IsReadOnly: true, Source: &types.VolumeSource{VirtiofsSource: proto.String("/srv/shared")}},
		},
		Interfaces: []*types.NetworkInterface{
			{DeviceId: "eth0", Type: types.NetworkInterface_MACVTAP},
			{DeviceId: "eth1", Type: types.NetworkInterface_TAP, GuestMac: proto.String("02:00:00:00:00:01"),
				Address: &types.StaticAddress{Address: "192.168.10.5/24", Gateway: proto.String("192.168.10.1"),
					Nameservers: []string{"1.1.1.1", "2001:4860:4860::8888"}},
				Overrides: &types.NetworkOverrides{BridgeName: proto.String("br-lm0")}},
		},
		Metadata: map[string]string{
			"meta-data": "aW5zdGFuY2VfaWQ6IHgK",
			"user-data": "I2Nsb3VkLWNvbmZpZwo=",
			"extra.txt": "",
		},
		Provider: proto.String("qemu"),
	}
}

func TestValidSpecIsValid(t *testing.T) {
	if err := CreateMicroVMRequest(&v1alpha1.CreateMicroVMRequest{Microvm: validSpec()}, testProviders); err != nil {
		t.Fatalf("valid spec rejected: %v", err)
	}
}

func TestNilMicroVM(t *testing.T) {
	for _, req := range []*v1alpha1.CreateMicroVMRequest{nil, {}} {
		err := CreateMicroVMRequest(req, testProviders)
		if err == nil || err.Error() != "microvm: required" || !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("got %v, want invalid argument \"microvm: required\"", err)
		}
	}
}

func TestCreateMicroVMRequest(t *testing.T) {
	sp := proto.String
	tests := []struct {
		name   string
		mutate func(s *types.MicroVMSpec)
		// wantField is the field path of the expected problem, "" for valid.
		wantField string
		// wantDetail is a substring of the problem's detail.
		wantDetail string
	}{
		// id and namespace
		{"id long subdomain ok", func(s *types.MicroVMSpec) { s.Id = strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) }, "", ""},
		{"id empty", func(s *types.MicroVMSpec) { s.Id = "" }, "microvm.id", "required"},
		{"id dotdot", func(s *types.MicroVMSpec) { s.Id = ".." }, "microvm.id", "RFC 1123"},
		{"id slash", func(s *types.MicroVMSpec) { s.Id = "a/b" }, "microvm.id", "RFC 1123"},
		{"id upper", func(s *types.MicroVMSpec) { s.Id = "VM1" }, "microvm.id", "RFC 1123"},
		{"id too long", func(s *types.MicroVMSpec) { s.Id = strings.Repeat("a", 254) }, "microvm.id", "253"},
		{"namespace dotted ok", func(s *types.MicroVMSpec) { s.Namespace = "team.a" }, "", ""},
		{"namespace empty", func(s *types.MicroVMSpec) { s.Namespace = "" }, "microvm.namespace", "required"},
		{"namespace dotdot", func(s *types.MicroVMSpec) { s.Namespace = "a..b" }, "microvm.namespace", "RFC 1123"},
		{"namespace slash", func(s *types.MicroVMSpec) { s.Namespace = "../etc" }, "microvm.namespace", "RFC 1123"},

		// uid and timestamps
		{"uid empty string is unset", func(s *types.MicroVMSpec) { s.Uid = sp("") }, "", ""},
		{"uid set", func(s *types.MicroVMSpec) { s.Uid = sp("01HZX") }, "microvm.uid", "set by the server"},
		{"timestamps ignored", func(s *types.MicroVMSpec) {
			s.CreatedAt = timestamppb.Now()
			s.UpdatedAt = timestamppb.Now()
			s.DeletedAt = timestamppb.Now()
		}, "", ""},
		{"timestamp out of range", func(s *types.MicroVMSpec) {
			s.CreatedAt = &timestamppb.Timestamp{Seconds: 1 << 60}
		}, "microvm.created_at", "not a valid timestamp"},
		{"timestamp bad nanos", func(s *types.MicroVMSpec) {
			s.DeletedAt = &timestamppb.Timestamp{Nanos: -1}
		}, "microvm.deleted_at", "not a valid timestamp"},

		// labels
		{"labels empty value ok", func(s *types.MicroVMSpec) { s.Labels["x"] = "" }, "", ""},
		{"label key bad", func(s *types.MicroVMSpec) { s.Labels["bad key"] = "v" }, `microvm.labels["bad key"]`, "key: name part"},
		{"label key prefix bad", func(s *types.MicroVMSpec) { s.Labels["Bad_Prefix/k"] = "v" }, `microvm.labels["Bad_Prefix/k"]`, "key: prefix part"},
		{"label value bad", func(s *types.MicroVMSpec) { s.Labels["k"] = "a b" }, `microvm.labels["k"]`, "value: "},
		{"label value too long", func(s *types.MicroVMSpec) { s.Labels["k"] = strings.Repeat("v", 64) }, `microvm.labels["k"]`, "63"},

		// vcpu and memory
		{"vcpu min", func(s *types.MicroVMSpec) { s.Vcpu = MinVCPU }, "", ""},
		{"vcpu max", func(s *types.MicroVMSpec) { s.Vcpu = MaxVCPU }, "", ""},
		{"vcpu zero", func(s *types.MicroVMSpec) { s.Vcpu = 0 }, "microvm.vcpu", "0 is not in 1..64"},
		{"vcpu too many", func(s *types.MicroVMSpec) { s.Vcpu = MaxVCPU + 1 }, "microvm.vcpu", "65 is not in"},
		{"vcpu negative", func(s *types.MicroVMSpec) { s.Vcpu = -1 }, "microvm.vcpu", "-1 is not in"},
		{"memory min", func(s *types.MicroVMSpec) { s.MemoryInMb = MinMemoryMB }, "", ""},
		{"memory max", func(s *types.MicroVMSpec) { s.MemoryInMb = MaxMemoryMB }, "", ""},
		{"memory small", func(s *types.MicroVMSpec) { s.MemoryInMb = MinMemoryMB - 1 }, "microvm.memory_in_mb", "127 is not in 128..262144"},
		{"memory big", func(s *types.MicroVMSpec) { s.MemoryInMb = MaxMemoryMB + 1 }, "microvm.memory_in_mb", "is not in"},

		// kernel and initrd
		{"kernel nil", func(s *types.MicroVMSpec) { s.Kernel = nil }, "microvm.kernel", "required"},
		{"kernel image empty", func(s *types.MicroVMSpec) { s.Kernel.Image = "" }, "microvm.kernel.image", "required"},
		{"kernel image digest ok", func(s *types.MicroVMSpec) { s.Kernel.Image = "kernel@sha256:" + strings.Repeat("0", 64) }, "", ""},
		{"kernel image upper", func(s *types.MicroVMSpec) { s.Kernel.Image = "Ubuntu:22.04" }, "microvm.kernel.image", "not an OCI image reference"},
		{"kernel image scheme", func(s *types.MicroVMSpec) { s.Kernel.Image = "https://registry.example.com/k:1" }, "microvm.kernel.image", "not an OCI image reference"},
		{"kernel image bad digest", func(s *types.MicroVMSpec) { s.Kernel.Image = "k@sha256:abc" }, "microvm.kernel.image", "not an OCI image reference"},
		{"kernel filename absolute ok", func(s *types.MicroVMSpec) { s.Kernel.Filename = sp("/boot/vmlinuz") }, "", ""},
		{"kernel filename empty is unset", func(s *types.MicroVMSpec) { s.Kernel.Filename = sp("") }, "", ""},
		{"kernel filename dotdot", func(s *types.MicroVMSpec) { s.Kernel.Filename = sp("../etc/shadow") }, "microvm.kernel.filename", "escapes"},
		{"kernel filename unclean", func(s *types.MicroVMSpec) { s.Kernel.Filename = sp("boot/../../x") }, "microvm.kernel.filename", `want "../x"`},
		{"kernel filename dot slash", func(s *types.MicroVMSpec) { s.Kernel.Filename = sp("./vmlinux") }, "microvm.kernel.filename", "not a clean path"},
		{"kernel filename root", func(s *types.MicroVMSpec) { s.Kernel.Filename = sp("/") }, "microvm.kernel.filename", "folder"},
		{"initrd nil ok", func(s *types.MicroVMSpec) { s.Initrd = nil }, "", ""},
		{"initrd image empty", func(s *types.MicroVMSpec) { s.Initrd.Image = "" }, "microvm.initrd.image", "required"},
		{"initrd image bad", func(s *types.MicroVMSpec) { s.Initrd.Image = "a b" }, "microvm.initrd.image", "not an OCI image reference"},
		{"initrd filename dotdot", func(s *types.MicroVMSpec) { s.Initrd.Filename = sp("..") }, "microvm.initrd.filename", "escapes"},
		{"initrd filename trailing slash", func(s *types.MicroVMSpec) { s.Initrd.Filename = sp("boot/") }, "microvm.initrd.filename", "not a clean path"},

		// kernel cmdline
		{"cmdline dotted key ok", func(s *types.MicroVMSpec) { s.Kernel.Cmdline["systemd.unit"] = "rescue.target" }, "", ""},
		{"cmdline value with = ok", func(s *types.MicroVMSpec) { s.Kernel.Cmdline["root"] = "PARTUUID=abc" }, "", ""},
		{"cmdline empty key", func(s *types.MicroVMSpec) { s.Kernel.Cmdline[""] = "x" }, `microvm.kernel.cmdline[""]`, "key is empty"},
		{"cmdline key =", func(s *types.MicroVMSpec) { s.Kernel.Cmdline["a=b"] = "" }, `microvm.kernel.cmdline["a=b"]`, "key contains '='"},
		{"cmdline key space", func(s *types.MicroVMSpec) { s.Kernel.Cmdline["a b"] = "" }, `microvm.kernel.cmdline["a b"]`, "key contains whitespace"},
		{"cmdline value space", func(s *types.MicroVMSpec) { s.Kernel.Cmdline["k"] = "a b" }, `microvm.kernel.cmdline["k"]`, "value contains whitespace"},
		{"cmdline value newline", func(s *types.MicroVMSpec) { s.Kernel.Cmdline["k"] = "a\nb" }, `microvm.kernel.cmdline["k"]`, "value contains whitespace"},
		{"cmdline value NUL", func(s *types.MicroVMSpec) { s.Kernel.Cmdline["k"] = "a\x00" }, `microvm.kernel.cmdline["k"]`, "control character"},
		{"cmdline value quote", func(s *types.MicroVMSpec) { s.Kernel.Cmdline["k"] = `"a"` }, `microvm.kernel.cmdline["k"]`, "quote"},
		{"cmdline too long", func(s *types.MicroVMSpec) { s.Kernel.Cmdline["big"] = strings.Repeat("x", MaxCmdlineBytes) }, "microvm.kernel.cmdline", "more than the kernel's 2048"},

		// volumes
		{"root volume nil ok", func(s *types.MicroVMSpec) { s.RootVolume = nil }, "", ""},
		{"root volume id empty", func(s *types.MicroVMSpec) { s.RootVolume.Id = "" }, "microvm.root_volume.id", "required"},
		{"root volume id not a label", func(s *types.MicroVMSpec) { s.RootVolume.Id = "root.fs" }, "microvm.root_volume.id", "must not contain dots"},
		{"volume id duplicate", func(s *types.MicroVMSpec) { s.AdditionalVolumes[1].Id = "root" }, "microvm.additional_volumes[1].id", `duplicate volume id "root" (also microvm.root_volume.id)`},
		{"volume id empty", func(s *types.MicroVMSpec) { s.AdditionalVolumes[0].Id = "" }, "microvm.additional_volumes[0].id", "required"},
		{"volume nil", func(s *types.MicroVMSpec) { s.AdditionalVolumes[0] = nil }, "microvm.additional_volumes[0]", "required"},
		{"volume no source", func(s *types.MicroVMSpec) { s.RootVolume.Source = nil }, "microvm.root_volume.source", "required"},
		{"volume empty sources", func(s *types.MicroVMSpec) {
			s.RootVolume.Source = &types.VolumeSource{ContainerSource: sp(""), VirtiofsSource: sp("")}
		}, "microvm.root_volume.source", "required"},
		{"volume two sources", func(s *types.MicroVMSpec) { s.RootVolume.Source.VirtiofsSource = sp("/srv") }, "microvm.root_volume.source", "not both"},
		{"volume bad image", func(s *types.MicroVMSpec) { s.RootVolume.Source.ContainerSource = sp("UPPER") }, "microvm.root_volume.source.container_source", "not an OCI image reference"},
		{"virtiofs relative", func(s *types.MicroVMSpec) { s.AdditionalVolumes[1].Source.VirtiofsSource = sp("srv/shared") }, "microvm.additional_volumes[1].source.virtiofs_source", "not an absolute path"},
		{"virtiofs unclean", func(s *types.MicroVMSpec) { s.AdditionalVolumes[1].Source.VirtiofsSource = sp("/srv/../etc") }, "microvm.additional_volumes[1].source.virtiofs_source", `want "/etc"`},
		{"size max ok", func(s *types.MicroVMSpec) { s.AdditionalVolumes[0].SizeInMb = proto.Int32(MaxVolumeSizeMB) }, "", ""},
		{"size zero", func(s *types.MicroVMSpec) { s.AdditionalVolumes[0].SizeInMb = proto.Int32(0) }, "microvm.additional_volumes[0].size_in_mb", "0 is not in 1..2097152"},
		{"size negative", func(s *types.MicroVMSpec) { s.AdditionalVolumes[0].SizeInMb = proto.Int32(-5) }, "microvm.additional_volumes[0].size_in_mb", "is not in"},
		{"size too big", func(s *types.MicroVMSpec) { s.AdditionalVolumes[0].SizeInMb = proto.Int32(MaxVolumeSizeMB + 1) }, "microvm.additional_volumes[0].size_in_mb", "is not in"},
		{"mount point relative", func(s *types.MicroVMSpec) { s.AdditionalVolumes[0].MountPoint = sp("mnt") }, "microvm.additional_volumes[0].mount_point", "not an absolute path"},
		{"mount point unclean", func(s *types.MicroVMSpec) { s.AdditionalVolumes[0].MountPoint = sp("/mnt//data/") }, "microvm.additional_volumes[0].mount_point", "not a clean path"},
		{"partition 12 ok", func(s *types.MicroVMSpec) { s.AdditionalVolumes[0].PartitionId = sp("12") }, "", ""},
		{"partition zero", func(s *types.MicroVMSpec) { s.AdditionalVolumes[0].PartitionId = sp("0") }, "microvm.additional_volumes[0].partition_id", "not a positive integer"},
		{"partition leading zero", func(s *types.MicroVMSpec) { s.AdditionalVolumes[0].PartitionId = sp("01") }, "microvm.additional_volumes[0].partition_id", "not a positive integer"},
		{"partition sign", func(s *types.MicroVMSpec) { s.AdditionalVolumes[0].PartitionId = sp("+1") }, "microvm.additional_volumes[0].partition_id", "not a positive integer"},
		{"partition word", func(s *types.MicroVMSpec) { s.AdditionalVolumes[0].PartitionId = sp("root") }, "microvm.additional_volumes[0].partition_id", "not a positive integer"},

		// interfaces
		{"interface nil", func(s *types.MicroVMSpec) { s.Interfaces[0] = nil }, "microvm.interfaces[0]", "required"},
		{"device id empty", func(s *types.MicroVMSpec) { s.Interfaces[0].DeviceId = "" }, "microvm.interfaces[0].device_id", "required"},
		{"device id 15 ok", func(s *types.MicroVMSpec) { s.Interfaces[0].DeviceId = strings.Repeat("e", 15) }, "", ""},
		{"device id too long", func(s *types.MicroVMSpec) { s.Interfaces[0].DeviceId = strings.Repeat("e", 16) }, "microvm.interfaces[0].device_id", "longer than 15"},
		{"device id upper", func(s *types.MicroVMSpec) { s.Interfaces[0].DeviceId = "Eth0" }, "microvm.interfaces[0].device_id", "not a guest interface name"},
		{"device id dash", func(s *types.MicroVMSpec) { s.Interfaces[0].DeviceId = "eth-0" }, "microvm.interfaces[0].device_id", "not a guest interface name"},
		{"device id duplicate", func(s *types.MicroVMSpec) { s.Interfaces[1].DeviceId = "eth0" }, "microvm.interfaces[1].device_id", "duplicate device id"},
		{"mac upper dashes ok", func(s *types.MicroVMSpec) { s.Interfaces[1].GuestMac = sp("AA-BB-CC-00-11-22") }, "", ""},
		{"mac bad", func(s *types.MicroVMSpec) { s.Interfaces[1].GuestMac = sp("zz:00:00:00:00:01") }, "microvm.interfaces[1].guest_mac", "not a MAC address"},
		{"mac eui64", func(s *types.MicroVMSpec) { s.Interfaces[1].GuestMac = sp("02:00:00:00:00:00:00:01") }, "microvm.interfaces[1].guest_mac", "not a MAC address"},
		{"mac multicast", func(s *types.MicroVMSpec) { s.Interfaces[1].GuestMac = sp("01:00:5e:00:00:01") }, "microvm.interfaces[1].guest_mac", "multicast"},
		{"mac broadcast", func(s *types.MicroVMSpec) { s.Interfaces[1].GuestMac = sp("ff:ff:ff:ff:ff:ff") }, "microvm.interfaces[1].guest_mac", "multicast"},
		{"mac zero", func(s *types.MicroVMSpec) { s.Interfaces[1].GuestMac = sp("00:00:00:00:00:00") }, "microvm.interfaces[1].guest_mac", "all-zero"},
		{"mac duplicate other spelling", func(s *types.MicroVMSpec) {
			s.Interfaces[0].GuestMac = sp("02-00-00-00-00-01")
		}, "microvm.interfaces[1].guest_mac", "duplicate MAC address 02:00:00:00:00:01 (also microvm.interfaces[0].guest_mac)"},
		{"type unknown", func(s *types.MicroVMSpec) { s.Interfaces[0].Type = 7 }, "microvm.interfaces[0].type", "unknown interface type 7"},
		{"address v6 ok", func(s *types.MicroVMSpec) {
			s.Interfaces[1].Address = &types.StaticAddress{Address: "fd00::5/64", Gateway: sp("fd00::1")}
		}, "", ""},
		{"address empty", func(s *types.MicroVMSpec) { s.Interfaces[1].Address.Address = "" }, "microvm.interfaces[1].address.address", "required"},
		{"address no prefix", func(s *types.MicroVMSpec) { s.Interfaces[1].Address.Address = "192.168.10.5" }, "microvm.interfaces[1].address.address", "not a CIDR"},
		{"address bad", func(s *types.MicroVMSpec) { s.Interfaces[1].Address.Address = "192.168.10.500/24" }, "microvm.interfaces[1].address.address", "not a CIDR"},
		{"address unspecified", func(s *types.MicroVMSpec) { s.Interfaces[1].Address.Address = "0.0.0.0/0" }, "microvm.interfaces[1].address.address", "not a host address"},
		{"gateway outside subnet", func(s *types.MicroVMSpec) { s.Interfaces[1].Address.Gateway = sp("192.168.11.1") }, "microvm.interfaces[1].address.gateway", "not in the subnet 192.168.10.0/24"},
		{"gateway not ip", func(s *types.MicroVMSpec) { s.Interfaces[1].Address.Gateway = sp("router") }, "microvm.interfaces[1].address.gateway", "not an IP address"},
		{"gateway own address", func(s *types.MicroVMSpec) { s.Interfaces[1].Address.Gateway = sp("192.168.10.5") }, "microvm.interfaces[1].address.gateway", "own address"},
		{"gateway other family", func(s *types.MicroVMSpec) { s.Interfaces[1].Address.Gateway = sp("fd00::1") }, "microvm.interfaces[1].address.gateway", "not in the subnet"},
		{"nameserver bad", func(s *types.MicroVMSpec) { s.Interfaces[1].Address.Nameservers[1] = "dns.google" }, "microvm.interfaces[1].address.nameservers[1]", "not an IP address"},
		{"bridge bad slash", func(s *types.MicroVMSpec) { s.Interfaces[1].Overrides.BridgeName = sp("br/0") }, "microvm.interfaces[1].overrides.bridge_name", "not an interface name"},
		{"bridge space", func(s *types.MicroVMSpec) { s.Interfaces[1].Overrides.BridgeName = sp("br 0") }, "microvm.interfaces[1].overrides.bridge_name", "not an interface name"},
		{"bridge dotdot", func(s *types.MicroVMSpec) { s.Interfaces[1].Overrides.BridgeName = sp("..") }, "microvm.interfaces[1].overrides.bridge_name", "not an interface name"},
		{"bridge too long", func(s *types.MicroVMSpec) { s.Interfaces[1].Overrides.BridgeName = sp("bridge-too-long0") }, "microvm.interfaces[1].overrides.bridge_name", "longer than 15"},
		{"bridge upper dash ok", func(s *types.MicroVMSpec) { s.Interfaces[1].Overrides.BridgeName = sp("Br_0-x.y") }, "", ""},

		// metadata
		{"metadata vendor and network ok", func(s *types.MicroVMSpec) {
			s.Metadata["vendor-data"] = "eA=="
			s.Metadata["network-config"] = "dmVyc2lvbjogMgo="
		}, "", ""},
		{"metadata wrapped base64 ok", func(s *types.MicroVMSpec) { s.Metadata["user-data"] = "YWJj\nZGVm" }, "", ""},
		{"metadata not base64", func(s *types.MicroVMSpec) { s.Metadata["user-data"] = "#cloud-config" }, `microvm.metadata["user-data"]`, "not standard base64"},
		{"metadata url base64", func(s *types.MicroVMSpec) { s.Metadata["user-data"] = "-_-_" }, `microvm.metadata["user-data"]`, "not standard base64"},
		{"metadata key path", func(s *types.MicroVMSpec) { s.Metadata["../etc/passwd"] = "" }, `microvm.metadata["../etc/passwd"]`, "safe file name"},
		{"metadata key hidden", func(s *types.MicroVMSpec) { s.Metadata[".hidden"] = "" }, `microvm.metadata[".hidden"]`, "safe file name"},
		{"metadata key empty", func(s *types.MicroVMSpec) { s.Metadata[""] = "" }, `microvm.metadata[""]`, "key is empty"},

		// provider
		{"provider other known", func(s *types.MicroVMSpec) { s.Provider = sp("firecracker") }, "", ""},
		{"provider unset", func(s *types.MicroVMSpec) { s.Provider = nil }, "microvm.provider", "required"},
		{"provider unknown", func(s *types.MicroVMSpec) { s.Provider = sp("vbox") }, "microvm.provider", `unknown provider "vbox" (known: qemu, firecracker)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := validSpec()
			tc.mutate(spec)
			err := CreateMicroVMRequest(&v1alpha1.CreateMicroVMRequest{Microvm: spec}, testProviders)
			if tc.wantField == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want a problem at %s, got none", tc.wantField)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error %v does not wrap ErrInvalidArgument", err)
			}
			var verr *Error
			if !errors.As(err, &verr) {
				t.Fatalf("error %T is not *Error", err)
			}
			for _, p := range verr.Problems {
				if p.Field == tc.wantField && strings.Contains(p.Detail, tc.wantDetail) {
					// The message carries it as "<field>: <detail>".
					if !strings.Contains(err.Error(), tc.wantField+": ") {
						t.Fatalf("message %q lacks %q", err.Error(), tc.wantField)
					}
					return
				}
			}
			t.Fatalf("want problem %s: …%s…, got %q", tc.wantField, tc.wantDetail, err)
		})
	}
}

func TestAllProblemsListed(t *testing.T) {
	spec := validSpec()
	spec.Id = "Bad"
	spec.Vcpu = 0
	spec.Interfaces[1].GuestMac = proto.String("nope")
	spec.Metadata["user-data"] = "!"
	err := CreateMicroVMRequest(&v1alpha1.CreateMicroVMRequest{Microvm: spec}, testProviders)
	if err == nil {
		t.Fatal("want error")
	}
	parts := strings.Split(err.Error(), "; ")
	want := []string{"microvm.id: ", "microvm.vcpu: ", "microvm.interfaces[1].guest_mac: not a MAC address", `microvm.metadata["user-data"]: `}
	if len(parts) != len(want) {
		t.Fatalf("want %d problems, got %d: %q", len(want), len(parts), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(parts[i], w) {
			t.Errorf("problem %d = %q, want prefix %q", i, parts[i], w)
		}
	}
	// Deterministic: the same input gives the same message.
	again := CreateMicroVMRequest(&v1alpha1.CreateMicroVMRequest{Microvm: spec}, testProviders)
	if again.Error() != err.Error() {
		t.Fatalf("message not deterministic:\n%s\n%s", err, again)
	}
}

func TestRequestMetadataIgnored(t *testing.T) {
	a, err := anypb.New(wrapperspb.String("anything"))
	if err != nil {
		t.Fatal(err)
	}
	req := &v1alpha1.CreateMicroVMRequest{
		Microvm:  validSpec(),
		Metadata: map[string]*anypb.Any{"x": a, "": nil, "bad key!": {TypeUrl: "nonsense"}},
	}
	if err := CreateMicroVMRequest(req, testProviders); err != nil {
		t.Fatalf("request metadata should be ignored: %v", err)
	}
}

func TestDefaults(t *testing.T) {
	spec := &types.MicroVMSpec{Id: "x"}
	Defaults(spec, "qemu")
	if spec.Namespace != DefaultNamespace || spec.Vcpu != DefaultVCPU || spec.MemoryInMb != DefaultMemoryMB || spec.GetProvider() != "qemu" {
		t.Fatalf("defaults not applied: %v", spec)
	}
	if spec.Namespace != "default" || spec.Vcpu != 2 || spec.MemoryInMb != 1024 {
		t.Fatalf("defaults differ from the wire contract: %v", spec)
	}
	// Empty optional provider counts as unset.
	spec = &types.MicroVMSpec{Provider: proto.String("")}
	Defaults(spec, "qemu")
	if spec.GetProvider() != "qemu" {
		t.Fatalf("empty provider not defaulted: %q", spec.GetProvider())
	}

	// Set fields are never overwritten, and nothing else is touched.
	set := validSpec()
	set.Vcpu, set.MemoryInMb, set.Namespace = 3, 512, "ns"
	set.Provider = proto.String("firecracker")
	before := proto.Clone(set)
	Defaults(set, "qemu")
	if !proto.Equal(before, set) {
		t.Fatalf("Defaults changed set fields:\nbefore %v\nafter  %v", before, set)
	}

	bare := &types.MicroVMSpec{Kernel: &types.Kernel{}}
	Defaults(bare, "")
	if bare.Provider != nil || bare.Kernel.Image != "" || bare.Interfaces != nil {
		t.Fatalf("Defaults touched other fields: %v", bare)
	}
	Defaults(nil, "qemu") // must not panic
}

func TestDefaultsThenValidate(t *testing.T) {
	spec := validSpec()
	spec.Namespace, spec.Vcpu, spec.MemoryInMb, spec.Provider = "", 0, 0, nil
	req := &v1alpha1.CreateMicroVMRequest{Microvm: spec}
	if err := CreateMicroVMRequest(req, testProviders); err == nil {
		t.Fatal("zero fields should fail before Defaults")
	}
	Defaults(spec, "qemu")
	if err := CreateMicroVMRequest(req, testProviders); err != nil {
		t.Fatalf("defaulted spec invalid: %v", err)
	}
}
