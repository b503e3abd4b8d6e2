package validate

import (
	"errors"
	"net"
	"net/netip"
	"path"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// setField puts value into one of the spec's string fields, chosen by which,
// so that the fuzzer explores each rule starting from a valid spec.
func setField(s *types.MicroVMSpec, which uint8, value string) {
	if s.Kernel == nil {
		s.Kernel = &types.Kernel{}
	}
	if s.RootVolume == nil {
		s.RootVolume = &types.Volume{}
	}
	if s.RootVolume.Source == nil {
		s.RootVolume.Source = &types.VolumeSource{}
	}
	if len(s.Interfaces) == 0 || s.Interfaces[0] == nil {
		s.Interfaces = append([]*types.NetworkInterface{{DeviceId: "eth0"}}, s.Interfaces...)
	}
	iface := s.Interfaces[0]
	if iface.Address == nil {
		iface.Address = &types.StaticAddress{}
	}
	if s.Kernel.Cmdline == nil {
		s.Kernel.Cmdline = map[string]string{}
	}
	if s.Metadata == nil {
		s.Metadata = map[string]string{}
	}
	if s.Labels == nil {
		s.Labels = map[string]string{}
	}
	switch which % 20 {
	case 0:
		s.Id = value
	case 1:
		s.Namespace = value
	case 2:
		s.Kernel.Image = value
	case 3:
		s.Kernel.Filename = &value
	case 4:
		s.Kernel.Cmdline[value] = ""
	case 5:
		s.Kernel.Cmdline["k"] = value
	case 6:
		s.Labels[value] = "v"
	case 7:
		s.Labels["k"] = value
	case 8:
		s.RootVolume.Id = value
	case 9:
		s.RootVolume.Source.ContainerSource = &value
	case 10:
		s.RootVolume.Source.VirtiofsSource = &value
	case 11:
		s.RootVolume.MountPoint = &value
	case 12:
		s.RootVolume.PartitionId = &value
	case 13:
		iface.DeviceId = value
	case 14:
		iface.GuestMac = &value
	case 15:
		iface.Address.Address = value
	case 16:
		iface.Address.Gateway = &value
	case 17:
		iface.Overrides = &types.NetworkOverrides{BridgeName: &value}
	case 18:
		s.Metadata[value] = ""
	case 19:
		s.Metadata["user-data"] = value
	}
}

func FuzzCreateMicroVMRequest(f *testing.F) {
	valid, err := proto.Marshal(&v1alpha1.CreateMicroVMRequest{Microvm: validSpec()})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid, uint8(0), "vm-2")
	f.Add([]byte{}, uint8(14), "02:00:00:00:00:09")
	f.Add([]byte{}, uint8(15), "10.0.0.2/8")
	f.Add([]byte{}, uint8(3), "../vmlinux")
	f.Add([]byte{}, uint8(5), "a b")
	f.Add([]byte{0x0a, 0x00}, uint8(2), "alpine")
	f.Add(valid[:len(valid)/2], uint8(1), "")

	f.Fuzz(func(t *testing.T, data []byte, which uint8, value string) {
		req := &v1alpha1.CreateMicroVMRequest{}
		if err := proto.Unmarshal(data, req); err != nil {
			return
		}
		if req.Microvm == nil {
			req.Microvm = validSpec()
		}
		if utf8.ValidString(value) { // proto3 strings are UTF-8 on the wire
			setField(req.Microvm, which, value)
		}

		// Never panics, on raw and defaulted input; Defaults is idempotent.
		_ = CreateMicroVMRequest(req, testProviders)
		Defaults(req.Microvm, "qemu")
		once := proto.Clone(req)
		Defaults(req.Microvm, "qemu")
		if !proto.Equal(once, req) {
			t.Fatalf("Defaults not idempotent:\n%v\n%v", once, req)
		}

		err := CreateMicroVMRequest(req, testProviders)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error does not wrap ErrInvalidArgument: %v", err)
			}
			var verr *Error
			if !errors.As(err, &verr) || len(verr.Problems) == 0 {
				t.Fatalf("error carries no problems: %v", err)
			}
			for _, p := range verr.Problems {
				if !strings.HasPrefix(p.Field, "microvm") || p.Detail == "" {
					t.Fatalf("malformed problem %q", p)
				}
			}
			return
		}

		// Valid requests survive the wire, binary and JSON, and stay valid.
		bin, err := proto.Marshal(req)
		if err != nil {
			t.Fatalf("valid request does not marshal: %v", err)
		}
		back := &v1alpha1.CreateMicroVMRequest{}
		if err := proto.Unmarshal(bin, back); err != nil {
			t.Fatalf("unmarshal: %v", err)
		}
		if !proto.Equal(req, back) {
			t.Fatalf("binary round trip changed the request:\n%v\n%v", req, back)
		}
		if err := CreateMicroVMRequest(back, testProviders); err != nil {
			t.Fatalf("binary round trip made it invalid: %v", err)
		}

		// JSON: request metadata (Any of arbitrary types, ignored by the
		// server) cannot always be resolved, and unknown fields do not
		// exist in JSON; compare without both.
		plain := &v1alpha1.CreateMicroVMRequest{}
		if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(bin, plain); err != nil {
			t.Fatalf("unmarshal: %v", err)
		}
		plain.Metadata = nil
		js, err := protojson.Marshal(plain)
		if err != nil {
			t.Fatalf("valid request does not marshal to JSON: %v", err)
		}
		fromJSON := &v1alpha1.CreateMicroVMRequest{}
		if err := protojson.Unmarshal(js, fromJSON); err != nil {
			t.Fatalf("JSON unmarshal of %s: %v", js, err)
		}
		if !proto.Equal(plain, fromJSON) {
			t.Fatalf("JSON round trip changed the request:\n%v\n%v", plain, fromJSON)
		}
		if err := CreateMicroVMRequest(fromJSON, testProviders); err != nil {
			t.Fatalf("JSON round trip made it invalid: %v", err)
		}
	})
}

// FuzzCmdlineAndMAC checks the small parsers against what their consumers
// do with accepted values.
func FuzzCmdlineAndMAC(f *testing.F) {
	f.Add("console", "ttyS0", "02:00:00:00:00:01", "boot/vmlinuz", "10.0.0.5/24", "br0")
	f.Add("a=b", "x y", "01:00:5e:00:00:01", "../x", "10.0.0.5", "a/b")
	f.Add("k", "", "AA-BB-CC-DD-EE-FF", "/", "fd00::1/64", "..")
	f.Add("ro", "\u00a0", "0000.0000.0001", "/a/./b", "::ffff:1.2.3.4/120", "eth\u00a00")
	f.Fuzz(func(t *testing.T, key, val, mac, p, cidr, link string) {
		if cmdlineKeyProblem(key) == "" && cmdlineValueProblem(val) == "" {
			arg := key
			if val != "" {
				arg += "=" + val
			}
			// The kernel splits its command line on spaces, then at the
			// first '='.
			fields := strings.Fields(arg)
			if len(fields) != 1 || fields[0] != arg {
				t.Fatalf("accepted %q=%q splits into %q", key, val, fields)
			}
			k, v, _ := strings.Cut(arg, "=")
			if k != key || v != val {
				t.Fatalf("accepted %q=%q reads back as %q=%q", key, val, k, v)
			}
			if strings.ContainsAny(arg, "\"\x00\n") {
				t.Fatalf("accepted %q contains a quote, NUL or newline", arg)
			}
		}

		if norm, msg := parseGuestMAC(mac); msg == "" {
			hw, err := net.ParseMAC(mac)
			if err != nil || len(hw) != 6 || hw[0]&1 != 0 || hw.String() != norm {
				t.Fatalf("accepted MAC %q: %v %v %q", mac, hw, err, norm)
			}
			if again, msg := parseGuestMAC(norm); msg != "" || again != norm {
				t.Fatalf("canonical MAC %q not stable: %q %q", norm, again, msg)
			}
		}

		if imagePathProblem(p) == "" {
			// Joined under any image root it stays inside it.
			inside := path.Join("/image", p)
			if !strings.HasPrefix(inside, "/image/") {
				t.Fatalf("accepted image path %q escapes: %q", p, inside)
			}
			if path.Clean(p) != p {
				t.Fatalf("accepted unclean path %q", p)
			}
		}
		if hostPathProblem(p) == "" && (!path.IsAbs(p) || path.Clean(p) != p) {
			t.Fatalf("accepted host path %q", p)
		}

		if pfx, msg := parseInterfaceCIDR(cidr); msg == "" {
			again, err := netip.ParsePrefix(pfx.String())
			if err != nil || again != pfx || !pfx.Masked().Contains(pfx.Addr()) {
				t.Fatalf("accepted CIDR %q: %v %v", cidr, again, err)
			}
		}

		if linkNameProblem(link) == "" {
			if len(link) > MaxIfNameLen || strings.ContainsAny(link, "/: \t\n\x00") || link == "." || link == ".." {
				t.Fatalf("accepted link name %q", link)
			}
		}
		if link != "" && guestIfNameProblem(link) == "" && linkNameProblem(link) != "" {
			t.Fatalf("guest name %q accepted but not a valid link name", link)
		}
	})
}
