// Package validate owns the admission rules of the MicroVM API: the defaults
// a CreateMicroVM request gets (Defaults) and the checks it must pass before
// the server stores it (CreateMicroVMRequest). It reports every problem at
// once, each as "<proto field path>: <problem>", so that a client can fix a
// spec in one go.
//
// Decisions this package makes:
//   - Call Defaults first, then CreateMicroVMRequest: validation checks the
//     spec as it will be stored, so a zero vcpu or an empty namespace or
//     provider is an error there.
//   - uid is assigned by the server; a client that sets one gets an error
//     ("set by the server"), rather than having it silently replaced.
//   - created_at, updated_at and deleted_at are ignored (the server sets
//     them); they are only rejected when they are not valid timestamps,
//     because such values cannot be represented in JSON.
//   - An optional string field set to "" counts as unset.
//   - CreateMicroVMRequest.metadata (map of Any) is accepted and ignored.
//   - metadata keys may be any safe file name (they become files of the
//     cloud-init NoCloud disk), not only the four cloud-init documents.
package validate

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// Defaults applied by Defaults to zero fields.
const (
	DefaultNamespace = "default"
	DefaultVCPU      = 2
	DefaultMemoryMB  = 1024
)

// Bounds checked by CreateMicroVMRequest.
const (
	MinVCPU     = 1
	MaxVCPU     = 64
	MinMemoryMB = 128
	MaxMemoryMB = 262144 // 256 GiB
	// MaxVolumeSizeMB is 2 TiB.
	MaxVolumeSizeMB = 2 * 1024 * 1024
	// MaxCmdlineBytes bounds the extra kernel arguments (key=value joined by
	// spaces): the x86 kernel truncates its command line at 2048 bytes.
	MaxCmdlineBytes = 2048
	// MaxIfNameLen is the longest Linux interface name (IFNAMSIZ-1).
	MaxIfNameLen = 15
)

// Defaults fills zero fields per the contract: namespace "default", vcpu 2,
// memory_in_mb 1024, provider = defaultProvider when unset. It never
// overwrites set fields and touches nothing else.
func Defaults(spec *types.MicroVMSpec, defaultProvider string) {
	if spec == nil {
		return
	}
	if spec.Namespace == "" {
		spec.Namespace = DefaultNamespace
	}
	if spec.Vcpu == 0 {
		spec.Vcpu = DefaultVCPU
	}
	if spec.MemoryInMb == 0 {
		spec.MemoryInMb = DefaultMemoryMB
	}
	if spec.GetProvider() == "" && defaultProvider != "" {
		p := defaultProvider
		spec.Provider = &p
	}
}

// Error is the error CreateMicroVMRequest returns: the list of problems. It
// matches errdefs.ErrInvalidArgument with errors.Is.
type Error struct {
	Problems []Problem
}

// Problem is one invalid field.
type Problem struct {
	Field  string // proto field path, e.g. microvm.interfaces[1].guest_mac
	Detail string
}

func (p Problem) String() string { return p.Field + ": " + p.Detail }

// Error joins the problems with "; ".
func (e *Error) Error() string {
	s := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		s[i] = p.String()
	}
	return strings.Join(s, "; ")
}

// Unwrap makes errors.Is(err, errdefs.ErrInvalidArgument) true.
func (e *Error) Unwrap() error { return errdefs.ErrInvalidArgument }

// problems collects Problems in the order the fields are checked.
type problems []Problem

func (ps *problems) add(field, format string, args ...any) {
	*ps = append(*ps, Problem{Field: field, Detail: fmt.Sprintf(format, args...)})
}

// addAll records each message of a Kubernetes validation function.
func (ps *problems) addAll(field string, msgs []string) {
	for _, m := range msgs {
		ps.add(field, "%s", m)
	}
}

// CreateMicroVMRequest returns nil or an *Error (wrapping
// errdefs.ErrInvalidArgument) listing every problem of req. providers are
// the provider names the daemon runs. Apply Defaults to req.Microvm first.
func CreateMicroVMRequest(req *v1alpha1.CreateMicroVMRequest, providers []string) error {
	var ps problems
	spec := req.GetMicrovm()
	if spec == nil {
		ps.add("microvm", "required")
		return &Error{Problems: ps}
	}
	const p = "microvm"

	checkObjectName(&ps, p+".id", spec.Id)
	checkObjectName(&ps, p+".namespace", spec.Namespace)
	if spec.GetUid() != "" {
		ps.add(p+".uid", "set by the server; leave it empty")
	}
	for _, ts := range []struct {
		field string
		err   error
	}{
		{"created_at", checkTimestamp(spec.CreatedAt)},
		{"updated_at", checkTimestamp(spec.UpdatedAt)},
		{"deleted_at", checkTimestamp(spec.DeletedAt)},
	} {
		if ts.err != nil {
			ps.add(p+"."+ts.field, "not a valid timestamp: %v", ts.err)
		}
	}

	for _, k := range sortedKeys(spec.Labels) {
		f := fmt.Sprintf("%s.labels[%q]", p, k)
		ps.addAll(f, prefix("key: ", validation.IsQualifiedName(k)))
		ps.addAll(f, prefix("value: ", validation.IsValidLabelValue(spec.Labels[k])))
	}

	if spec.Vcpu < MinVCPU || spec.Vcpu > MaxVCPU {
		ps.add(p+".vcpu", "%d is not in %d..%d", spec.Vcpu, MinVCPU, MaxVCPU)
	}
	if spec.MemoryInMb < MinMemoryMB || spec.MemoryInMb > MaxMemoryMB {
		ps.add(p+".memory_in_mb", "%d is not in %d..%d", spec.MemoryInMb, MinMemoryMB, MaxMemoryMB)
	}

	checkKernel(&ps, p+".kernel", spec.Kernel)
	if spec.Initrd != nil {
		checkImage(&ps, p+".initrd.image", spec.Initrd.Image)
		if f := spec.Initrd.GetFilename(); f != "" {
			if msg := imagePathProblem(f); msg != "" {
				ps.add(p+".initrd.filename", "%s", msg)
			}
		}
	}

	volumeIDs := map[string]string{} // id -> field path of its first use
	if spec.RootVolume != nil {
		checkVolume(&ps, p+".root_volume", spec.RootVolume, volumeIDs)
	}
	for i, v := range spec.AdditionalVolumes {
		f := fmt.Sprintf("%s.additional_volumes[%d]", p, i)
		if v == nil {
			ps.add(f, "required")
			continue
		}
		checkVolume(&ps, f, v, volumeIDs)
	}

	deviceIDs := map[string]string{}
	macs := map[string]string{}
	for i, iface := range spec.Interfaces {
		f := fmt.Sprintf("%s.interfaces[%d]", p, i)
		if iface == nil {
			ps.add(f, "required")
			continue
		}
		checkInterface(&ps, f, iface, deviceIDs, macs)
	}

	for _, k := range sortedKeys(spec.Metadata) {
		f := fmt.Sprintf("%s.metadata[%q]", p, k)
		if msg := metadataKeyProblem(k); msg != "" {
			ps.add(f, "%s", msg)
		}
		if _, err := base64.StdEncoding.DecodeString(spec.Metadata[k]); err != nil {
			ps.add(f, "value is not standard base64: %v", err)
		}
	}

	checkRestart(&ps, p, spec)

	switch prov := spec.GetProvider(); {
	case prov == "":
		ps.add(p+".provider", "required")
	case !slices.Contains(providers, prov):
		ps.add(p+".provider", "unknown provider %q (known: %s)", prov, strings.Join(providers, ", "))
	}

	if len(ps) == 0 {
		return nil
	}
	return &Error{Problems: ps}
}

func checkObjectName(ps *problems, field, v string) {
	if v == "" {
		ps.add(field, "required")
		return
	}
	ps.addAll(field, validation.IsDNS1123Subdomain(v))
}

// checkTimestamp accepts nil and any timestamp representable in JSON.
func checkTimestamp(ts *timestamppb.Timestamp) error {
	if ts == nil {
		return nil
	}
	return ts.CheckValid()
}

func checkKernel(ps *problems, field string, k *types.Kernel) {
	if k == nil {
		ps.add(field, "required")
		return
	}
	checkImage(ps, field+".image", k.Image)
	if f := k.GetFilename(); f != "" {
		if msg := imagePathProblem(f); msg != "" {
			ps.add(field+".filename", "%s", msg)
		}
	}
	total := 0
	for _, key := range sortedKeys(k.Cmdline) {
		f := fmt.Sprintf("%s.cmdline[%q]", field, key)
		val := k.Cmdline[key]
		if msg := cmdlineKeyProblem(key); msg != "" {
			ps.add(f, "key %s", msg)
		}
		if msg := cmdlineValueProblem(val); msg != "" {
			ps.add(f, "value %s", msg)
		}
		total += len(key) + 1
		if val != "" {
			total += len(val) + 1
		}
	}
	if total > MaxCmdlineBytes {
		ps.add(field+".cmdline", "%d bytes of arguments, more than the kernel's %d", total, MaxCmdlineBytes)
	}
}

func checkImage(ps *problems, field, ref string) {
	if msg := imageRefProblem(ref); msg != "" {
		ps.add(field, "%s", msg)
	}
}

// imageRefProblem checks an OCI image reference as a registry client would
// resolve it ("alpine", "registry.example.com/org/img:tag", "repo@sha256:…").
func imageRefProblem(ref string) string {
	if ref == "" {
		return "required"
	}
	if _, err := name.ParseReference(ref); err != nil {
		return fmt.Sprintf("not an OCI image reference: %v", err)
	}
	return ""
}

// imagePathProblem checks a file path inside an image: clean, relative or
// absolute (both are interpreted inside the image), never escaping it.
func imagePathProblem(p string) string {
	if strings.ContainsRune(p, 0) {
		return "contains a NUL byte"
	}
	c := path.Clean(p)
	if c != p {
		return fmt.Sprintf("not a clean path (want %q)", c)
	}
	if c == ".." || strings.HasPrefix(c, "../") {
		return "escapes the image with \"..\""
	}
	if c == "." || c == "/" {
		return "names a folder, not a file"
	}
	return ""
}

// hostPathProblem checks an absolute clean host or guest path.
func hostPathProblem(p string) string {
	if strings.ContainsRune(p, 0) {
		return "contains a NUL byte"
	}
	if !path.IsAbs(p) {
		return "not an absolute path"
	}
	if c := path.Clean(p); c != p {
		return fmt.Sprintf("not a clean path (want %q)", c)
	}
	return ""
}

// cmdlineKeyProblem: kernel arguments are space separated "key[=value]".
func cmdlineKeyProblem(k string) string {
	if k == "" {
		return "is empty"
	}
	for _, r := range k {
		switch {
		case r == '=':
			return "contains '='"
		case r == '"':
			return "contains a quote"
		case unicode.IsSpace(r):
			return "contains whitespace"
		case unicode.IsControl(r):
			return "contains a control character"
		}
	}
	return ""
}

// cmdlineValueProblem: an empty value is a bare flag; quoting is not
// supported, so no whitespace or quotes.
func cmdlineValueProblem(v string) string {
	for _, r := range v {
		switch {
		case r == '"':
			return "contains a quote"
		case unicode.IsSpace(r):
			return "contains whitespace"
		case unicode.IsControl(r):
			return "contains a control character"
		}
	}
	return ""
}

func checkVolume(ps *problems, field string, v *types.Volume, ids map[string]string) {
	switch {
	case v.Id == "":
		ps.add(field+".id", "required")
	default:
		ps.addAll(field+".id", validation.IsDNS1123Label(v.Id))
		if first, dup := ids[v.Id]; dup {
			ps.add(field+".id", "duplicate volume id %q (also %s)", v.Id, first)
		} else {
			ids[v.Id] = field + ".id"
		}
	}

	src := v.Source
	cs, vs := src.GetContainerSource(), src.GetVirtiofsSource()
	switch {
	case cs == "" && vs == "":
		ps.add(field+".source", "required: one of container_source or virtiofs_source")
	case cs != "" && vs != "":
		ps.add(field+".source", "exactly one of container_source or virtiofs_source, not both")
	case cs != "":
		checkImage(ps, field+".source.container_source", cs)
	default:
		if msg := hostPathProblem(vs); msg != "" {
			ps.add(field+".source.virtiofs_source", "%s", msg)
		}
	}

	if v.SizeInMb != nil {
		if s := *v.SizeInMb; s <= 0 || s > MaxVolumeSizeMB {
			ps.add(field+".size_in_mb", "%d is not in 1..%d", s, MaxVolumeSizeMB)
		}
	}
	if mp := v.GetMountPoint(); mp != "" {
		if msg := hostPathProblem(mp); msg != "" {
			ps.add(field+".mount_point", "%s", msg)
		}
	}
	if pid := v.GetPartitionId(); pid != "" {
		if n, err := strconv.ParseUint(pid, 10, 31); err != nil || n == 0 || strconv.FormatUint(n, 10) != pid {
			ps.add(field+".partition_id", "%q is not a positive integer", pid)
		}
	}
}

func checkInterface(ps *problems, field string, iface *types.NetworkInterface, devs, macs map[string]string) {
	switch {
	case iface.DeviceId == "":
		ps.add(field+".device_id", "required")
	default:
		if msg := guestIfNameProblem(iface.DeviceId); msg != "" {
			ps.add(field+".device_id", "%s", msg)
		}
		if first, dup := devs[iface.DeviceId]; dup {
			ps.add(field+".device_id", "duplicate device id %q (also %s)", iface.DeviceId, first)
		} else {
			devs[iface.DeviceId] = field + ".device_id"
		}
	}

	if mac := iface.GetGuestMac(); mac != "" {
		norm, msg := parseGuestMAC(mac)
		if msg != "" {
			ps.add(field+".guest_mac", "%s", msg)
		} else if first, dup := macs[norm]; dup {
			ps.add(field+".guest_mac", "duplicate MAC address %s (also %s)", norm, first)
		} else {
			macs[norm] = field + ".guest_mac"
		}
	}

	if _, known := types.NetworkInterface_IfaceType_name[int32(iface.Type)]; !known {
		ps.add(field+".type", "unknown interface type %d (want TAP or MACVTAP)", int32(iface.Type))
	}

	if a := iface.Address; a != nil {
		checkStaticAddress(ps, field+".address", a)
	}
	if b := iface.GetOverrides().GetBridgeName(); b != "" {
		if msg := linkNameProblem(b); msg != "" {
			ps.add(field+".overrides.bridge_name", "%s", msg)
		}
	}
}

func checkStaticAddress(ps *problems, field string, a *types.StaticAddress) {
	var prefix netip.Prefix
	if a.Address == "" {
		ps.add(field+".address", "required")
	} else if pfx, msg := parseInterfaceCIDR(a.Address); msg != "" {
		ps.add(field+".address", "%s", msg)
	} else {
		prefix = pfx
	}
	if gw := a.GetGateway(); gw != "" {
		ip, err := netip.ParseAddr(gw)
		switch {
		case err != nil:
			ps.add(field+".gateway", "not an IP address: %q", gw)
		case ip.Zone() != "":
			ps.add(field+".gateway", "must not have a zone: %q", gw)
		case prefix.IsValid() && !prefix.Masked().Contains(ip):
			ps.add(field+".gateway", "%s is not in the subnet %s", ip, prefix.Masked())
		case prefix.IsValid() && ip == prefix.Addr():
			ps.add(field+".gateway", "%s is the interface's own address", ip)
		}
	}
	for i, ns := range a.Nameservers {
		if ip, err := netip.ParseAddr(ns); err != nil || ip.Zone() != "" {
			ps.add(fmt.Sprintf("%s.nameservers[%d]", field, i), "not an IP address: %q", ns)
		}
	}
}

// parseInterfaceCIDR parses "IP/prefix-length" (the interface's address in
// its subnet, e.g. 192.168.1.10/24).
func parseInterfaceCIDR(s string) (netip.Prefix, string) {
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Sprintf("not a CIDR address like 192.168.1.10/24: %q", s)
	}
	if pfx.Addr().IsUnspecified() || pfx.Addr().IsMulticast() {
		return netip.Prefix{}, fmt.Sprintf("%s is not a host address", pfx.Addr())
	}
	return pfx, ""
}

// guestIfNameProblem: the name the guest gives the device (eth0, eth1 …).
func guestIfNameProblem(s string) string {
	if len(s) > MaxIfNameLen {
		return fmt.Sprintf("%q is longer than %d characters", s, MaxIfNameLen)
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') {
			return fmt.Sprintf("%q is not a guest interface name (lower case letters and digits, like eth1)", s)
		}
	}
	return ""
}

// linkNameProblem follows the kernel's dev_valid_name.
func linkNameProblem(s string) string {
	if len(s) > MaxIfNameLen {
		return fmt.Sprintf("%q is longer than %d bytes", s, MaxIfNameLen)
	}
	if s == "." || s == ".." {
		return fmt.Sprintf("%q is not an interface name", s)
	}
	for _, r := range s {
		if r == '/' || r == ':' || r == 0 || unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Sprintf("%q is not an interface name (no '/', ':' or whitespace)", s)
		}
	}
	return ""
}

// parseGuestMAC returns the canonical form (lower case, colons) of a
// unicast Ethernet MAC address, or a problem.
func parseGuestMAC(s string) (string, string) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Sprintf("not a MAC address: %q", s)
	}
	if hw[0]&1 == 1 {
		return "", fmt.Sprintf("%s is a multicast address", hw)
	}
	if slices.Equal(hw, net.HardwareAddr{0, 0, 0, 0, 0, 0}) {
		return "", "the all-zero address is not usable"
	}
	return hw.String(), ""
}

// metadataKeyProblem: keys become file names on the NoCloud disk.
func metadataKeyProblem(k string) string {
	if k == "" {
		return "key is empty"
	}
	if len(k) > 255 {
		return "key is longer than 255 bytes"
	}
	for i, r := range k {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			i > 0 && (r == '-' || r == '_' || r == '.')
		if !ok {
			return "key is not a safe file name (letters, digits, '-', '_', '.'; starting with a letter or digit)"
		}
	}
	return ""
}

func prefix(p string, msgs []string) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = p + m
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
