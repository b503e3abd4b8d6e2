package v1alpha1

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/crypto/ssh"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	flvalidate "github.com/liquidmetal-go/liquidmetal/internal/validate"
)

// Size limits of a microVM. They are flintlockd's own, so that a machine
// the webhook admits is one its host accepts; the memory minimum is the
// CRD's.
const (
	MinVCPU      = flvalidate.MinVCPU
	MaxVCPU      = flvalidate.MaxVCPU
	MinMemoryMiB = 1024
	MaxMemoryMiB = flvalidate.MaxMemoryMB
	// maxIfNameLen is the longest Linux interface name.
	maxIfNameLen = flvalidate.MaxIfNameLen
)

// validateClusterSpec checks a MicrovmCluster spec (or a template's). The
// control-plane endpoint may be empty: the Cluster's is used then.
func validateClusterSpec(p *field.Path, s *infrav1.MicrovmClusterSpec) field.ErrorList {
	var errs field.ErrorList
	errs = append(errs, validateAPIEndpoint(p.Child("controlPlaneEndpoint"), s.ControlPlaneEndpoint)...)
	errs = append(errs, validateSSHKeys(p.Child("sshPublicKeys"), s.SSHPublicKeys)...)
	errs = append(errs, validatePlacement(p.Child("placement"), &s.Placement)...)
	if s.MicrovmProxy != nil {
		errs = append(errs, validateProxy(p.Child("microvmProxy", "endpoint"), s.MicrovmProxy.Endpoint)...)
	}
	if s.TLSSecretRef != "" {
		for _, msg := range validation.IsDNS1123Subdomain(s.TLSSecretRef) {
			errs = append(errs, field.Invalid(p.Child("tlsSecretRef"), s.TLSSecretRef, "not a Secret name: "+msg))
		}
	}
	return errs
}

// validatePlacement requires exactly one pool with at least one host, valid
// and distinct host:port endpoints, and a host that allows control-plane
// machines.
func validatePlacement(p *field.Path, pl *infrav1.Placement) field.ErrorList {
	var errs field.ErrorList
	var pool *infrav1.HostPool
	var pp *field.Path
	switch {
	case pl.StaticPool == nil && pl.DynamicPool == nil:
		return field.ErrorList{field.Required(p.Child("staticPool"), "a placement is required: set staticPool (or dynamicPool) with the flintlock hosts")}
	case pl.StaticPool != nil && pl.DynamicPool != nil:
		return field.ErrorList{field.Invalid(p, "staticPool and dynamicPool", "set exactly one of staticPool or dynamicPool")}
	case pl.StaticPool != nil:
		pool, pp = pl.StaticPool, p.Child("staticPool")
	default:
		pool, pp = pl.DynamicPool, p.Child("dynamicPool")
	}
	hp := pp.Child("hosts")
	if len(pool.Hosts) == 0 {
		return append(errs, field.Required(hp, "at least one flintlock host is required"))
	}
	seen := map[string]int{}
	controlPlane := false
	for i, h := range pool.Hosts {
		ep := hp.Index(i).Child("endpoint")
		if h.Endpoint == "" {
			errs = append(errs, field.Required(ep, "the host's flintlockd address, host:port"))
		} else if msg := hostPortProblem(h.Endpoint); msg != "" {
			errs = append(errs, field.Invalid(ep, h.Endpoint, msg))
		} else if j, dup := seen[h.Endpoint]; dup {
			errs = append(errs, field.Duplicate(ep, fmt.Sprintf("%s (also hosts[%d])", h.Endpoint, j)))
		} else {
			seen[h.Endpoint] = i
		}
		if h.AllowsControlPlane() {
			controlPlane = true
		}
	}
	if !controlPlane {
		errs = append(errs, field.Invalid(hp, fmt.Sprintf("%d hosts, none with controlplaneAllowed", len(pool.Hosts)),
			"at least one host must allow control-plane machines (controlplaneAllowed: true, the default)"))
	}
	if pool.BasicAuthSecret != "" {
		for _, msg := range validation.IsDNS1123Subdomain(pool.BasicAuthSecret) {
			errs = append(errs, field.Invalid(pp.Child("basicAuthSecret"), pool.BasicAuthSecret, "not a Secret name: "+msg))
		}
	}
	return errs
}

// hostPortProblem checks "host:port" with a host name or IP address and a
// port in 1..65535.
func hostPortProblem(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Sprintf("not host:port: %v", err)
	}
	if host == "" {
		return "the host part is empty"
	}
	if msg := hostProblem(host); msg != "" {
		return msg
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || strconv.FormatUint(n, 10) != port {
		return fmt.Sprintf("port %q is not a number in 1..65535", port)
	}
	return ""
}

// hostProblem accepts an IP address or a DNS name.
func hostProblem(host string) string {
	if _, err := netip.ParseAddr(host); err == nil {
		return ""
	}
	if msgs := validation.IsDNS1123Subdomain(strings.ToLower(host)); len(msgs) > 0 {
		return fmt.Sprintf("host %q is neither an IP address nor a DNS name", host)
	}
	return ""
}

// validateAPIEndpoint checks the control-plane endpoint when any of it is
// set: both host and port are needed then.
func validateAPIEndpoint(p *field.Path, ep clusterv1.APIEndpoint) field.ErrorList {
	if ep.IsZero() {
		return nil
	}
	var errs field.ErrorList
	if ep.Host == "" {
		errs = append(errs, field.Required(p.Child("host"), "the endpoint's host is required when its port is set"))
	} else if msg := hostProblem(ep.Host); msg != "" {
		errs = append(errs, field.Invalid(p.Child("host"), ep.Host, msg))
	}
	if ep.Port < 1 || ep.Port > 65535 {
		errs = append(errs, field.Invalid(p.Child("port"), ep.Port, "must be a port in 1..65535"))
	}
	return errs
}

// validateProxy accepts host:port or an http(s) URL with a host.
func validateProxy(p *field.Path, ep string) field.ErrorList {
	if ep == "" {
		return field.ErrorList{field.Required(p, "the proxy's address, host:port or an http(s) URL")}
	}
	if strings.Contains(ep, "://") {
		u, err := url.Parse(ep)
		if err != nil {
			return field.ErrorList{field.Invalid(p, ep, fmt.Sprintf("not a URL: %v", err))}
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return field.ErrorList{field.Invalid(p, ep, fmt.Sprintf("scheme %q is not http or https", u.Scheme))}
		}
		if u.Host == "" {
			return field.ErrorList{field.Invalid(p, ep, "the URL has no host")}
		}
		if u.Port() != "" {
			if msg := hostPortProblem(u.Host); msg != "" {
				return field.ErrorList{field.Invalid(p, ep, msg)}
			}
		} else if msg := hostProblem(u.Hostname()); msg != "" {
			return field.ErrorList{field.Invalid(p, ep, msg)}
		}
		return nil
	}
	if msg := hostPortProblem(ep); msg != "" {
		return field.ErrorList{field.Invalid(p, ep, msg)}
	}
	return nil
}

// validateSSHKeys checks that every authorized key parses as an
// authorized_keys line.
func validateSSHKeys(p *field.Path, keys []infrav1.SSHPublicKey) field.ErrorList {
	var errs field.ErrorList
	for i, k := range keys {
		kp := p.Index(i)
		if k.User != "" {
			if msg := userProblem(k.User); msg != "" {
				errs = append(errs, field.Invalid(kp.Child("user"), k.User, msg))
			}
		}
		for j, line := range k.AuthorizedKeys {
			if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line)); err != nil {
				errs = append(errs, field.Invalid(kp.Child("authorizedKeys").Index(j), abbreviate(line), fmt.Sprintf("not an SSH public key: %v", err)))
			}
		}
	}
	return errs
}

// userProblem follows the portable user names of useradd.
func userProblem(u string) string {
	if len(u) > 32 {
		return "longer than 32 characters"
	}
	for i, r := range u {
		ok := r >= 'a' && r <= 'z' || r == '_' ||
			i > 0 && (r >= '0' && r <= '9' || r == '-' || r == '.' || r >= 'A' && r <= 'Z')
		if !ok {
			return "not a user name (lower case letters, digits, '_', '-', '.'; starting with a letter or '_')"
		}
	}
	return ""
}

// abbreviate shortens a long value quoted in an error message.
func abbreviate(s string) string {
	if len(s) <= 40 {
		return s
	}
	return s[:37] + "..."
}

// validateMachineSpec checks a MicrovmMachine spec (or a template's). In a
// template, providerID must be empty.
func validateMachineSpec(p *field.Path, s *infrav1.MicrovmMachineSpec, template bool) field.ErrorList {
	errs := validateMicrovmSpec(p, &s.MicrovmSpec)
	errs = append(errs, validateSSHKeys(p.Child("sshPublicKeys"), s.SSHPublicKeys)...)
	if s.ProviderID != "" {
		if template {
			errs = append(errs, field.Forbidden(p.Child("providerID"), "set by the controller for each machine; must be empty in a template"))
		} else if msg := providerIDProblem(s.ProviderID); msg != "" {
			errs = append(errs, field.Invalid(p.Child("providerID"), s.ProviderID, msg))
		}
	}
	return errs
}

// providerIDProblem checks microvm://<host endpoint>/<uid>.
func providerIDProblem(id string) string {
	rest, ok := strings.CutPrefix(id, "microvm://")
	if !ok {
		return "must have the form microvm://<host endpoint>/<flintlock uid>"
	}
	host, uid, ok := strings.Cut(rest, "/")
	if !ok || host == "" || uid == "" || strings.Contains(uid, "/") {
		return "must have the form microvm://<host endpoint>/<flintlock uid>"
	}
	return ""
}

// validateMicrovmSpec checks the VM fields with flintlockd's own rules.
func validateMicrovmSpec(p *field.Path, s *infrav1.MicrovmSpec) field.ErrorList {
	var errs field.ErrorList
	if s.Provider != "" {
		for _, msg := range validation.IsDNS1123Label(s.Provider) {
			errs = append(errs, field.Invalid(p.Child("provider"), s.Provider, msg))
		}
	}
	if s.VCPU < MinVCPU || s.VCPU > MaxVCPU {
		errs = append(errs, field.Invalid(p.Child("vcpu"), s.VCPU, fmt.Sprintf("must be between %d and %d", MinVCPU, MaxVCPU)))
	}
	if s.MemoryMb < MinMemoryMiB || s.MemoryMb > MaxMemoryMiB {
		errs = append(errs, field.Invalid(p.Child("memoryMb"), s.MemoryMb, fmt.Sprintf("must be between %d and %d MiB", MinMemoryMiB, MaxMemoryMiB)))
	}

	ids := map[string]*field.Path{}
	rv := p.Child("rootVolume")
	errs = append(errs, validateVolumeID(rv.Child("id"), s.RootVolume.ID, ids)...)
	errs = append(errs, validateImage(rv.Child("image"), s.RootVolume.Image)...)
	errs = append(errs, validateGuestPath(rv.Child("mountPoint"), s.RootVolume.MountPoint)...)
	for i, v := range s.AdditionalVolumes {
		vp := p.Child("volumes").Index(i)
		errs = append(errs, validateVolumeID(vp.Child("id"), v.ID, ids)...)
		switch {
		case v.Image == "" && v.VirtiofsPath == "":
			errs = append(errs, field.Required(vp.Child("image"), "set image or virtiofsPath"))
		case v.Image != "" && v.VirtiofsPath != "":
			errs = append(errs, field.Invalid(vp.Child("virtiofsPath"), v.VirtiofsPath, "set image or virtiofsPath, not both"))
		case v.Image != "":
			errs = append(errs, validateImage(vp.Child("image"), v.Image)...)
		default:
			if msg := absPathProblem(v.VirtiofsPath); msg != "" {
				errs = append(errs, field.Invalid(vp.Child("virtiofsPath"), v.VirtiofsPath, msg))
			}
		}
		errs = append(errs, validateGuestPath(vp.Child("mountPoint"), v.MountPoint)...)
	}

	errs = append(errs, validateFileSource(p.Child("kernel"), &s.Kernel)...)
	if s.Initrd != nil {
		errs = append(errs, validateFileSource(p.Child("initrd"), s.Initrd)...)
	}
	errs = append(errs, validateCmdline(p.Child("kernelCmdline"), s.KernelCmdLine)...)

	ip := p.Child("networkInterfaces")
	if len(s.NetworkInterfaces) == 0 {
		errs = append(errs, field.Required(ip, "at least one network interface is required"))
	}
	names := map[string]int{}
	macs := map[string]int{}
	for i, n := range s.NetworkInterfaces {
		np := ip.Index(i)
		if n.GuestDeviceName == "" {
			errs = append(errs, field.Required(np.Child("guestDeviceName"), "the interface's name in the guest, like eth0"))
		} else if msg := guestIfNameProblem(n.GuestDeviceName); msg != "" {
			errs = append(errs, field.Invalid(np.Child("guestDeviceName"), n.GuestDeviceName, msg))
		} else if j, dup := names[n.GuestDeviceName]; dup {
			errs = append(errs, field.Duplicate(np.Child("guestDeviceName"), fmt.Sprintf("%s (also networkInterfaces[%d])", n.GuestDeviceName, j)))
		} else {
			names[n.GuestDeviceName] = i
		}
		if n.GuestMAC != "" {
			if norm, msg := parseGuestMAC(n.GuestMAC); msg != "" {
				errs = append(errs, field.Invalid(np.Child("guestMac"), n.GuestMAC, msg))
			} else if j, dup := macs[norm]; dup {
				errs = append(errs, field.Duplicate(np.Child("guestMac"), fmt.Sprintf("%s (also networkInterfaces[%d])", n.GuestMAC, j)))
			} else {
				macs[norm] = i
			}
		}
		if n.Type != infrav1.IfaceTypeMacvtap && n.Type != infrav1.IfaceTypeTap {
			errs = append(errs, field.NotSupported(np.Child("type"), n.Type, []infrav1.IfaceType{infrav1.IfaceTypeMacvtap, infrav1.IfaceTypeTap}))
		}
		if n.Address != "" {
			if msg := cidrProblem(n.Address); msg != "" {
				errs = append(errs, field.Invalid(np.Child("address"), n.Address, msg))
			}
		}
	}

	for _, k := range sortedKeys(s.Labels) {
		lp := p.Child("labels").Key(k)
		for _, msg := range validation.IsQualifiedName(k) {
			errs = append(errs, field.Invalid(lp, k, "key: "+msg))
		}
		for _, msg := range validation.IsValidLabelValue(s.Labels[k]) {
			errs = append(errs, field.Invalid(lp, s.Labels[k], "value: "+msg))
		}
	}
	return errs
}

func validateVolumeID(p *field.Path, id string, seen map[string]*field.Path) field.ErrorList {
	if id == "" {
		return field.ErrorList{field.Required(p, "the volume's id")}
	}
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Label(id) {
		errs = append(errs, field.Invalid(p, id, msg))
	}
	if first, dup := seen[id]; dup {
		errs = append(errs, field.Duplicate(p, fmt.Sprintf("%s (also %s)", id, first)))
	} else {
		seen[id] = p
	}
	return errs
}

func validateFileSource(p *field.Path, f *infrav1.ContainerFileSource) field.ErrorList {
	errs := validateImage(p.Child("image"), f.Image)
	if f.Filename != "" {
		if msg := imagePathProblem(f.Filename); msg != "" {
			errs = append(errs, field.Invalid(p.Child("filename"), f.Filename, msg))
		}
	}
	return errs
}

// validateImage checks an OCI image reference as flintlockd resolves it.
func validateImage(p *field.Path, ref string) field.ErrorList {
	if ref == "" {
		return field.ErrorList{field.Required(p, "an OCI image reference")}
	}
	if _, err := name.ParseReference(ref); err != nil {
		return field.ErrorList{field.Invalid(p, ref, fmt.Sprintf("not an OCI image reference: %v", err))}
	}
	return nil
}

// validateGuestPath accepts an empty or absolute clean path.
func validateGuestPath(p *field.Path, v string) field.ErrorList {
	if v == "" {
		return nil
	}
	if msg := absPathProblem(v); msg != "" {
		return field.ErrorList{field.Invalid(p, v, msg)}
	}
	return nil
}

func absPathProblem(v string) string {
	if strings.ContainsRune(v, 0) {
		return "contains a NUL byte"
	}
	if !path.IsAbs(v) {
		return "must be an absolute path"
	}
	if c := path.Clean(v); c != v {
		return fmt.Sprintf("not a clean path (want %q)", c)
	}
	return ""
}

// imagePathProblem checks a file path inside an image.
func imagePathProblem(v string) string {
	if strings.ContainsRune(v, 0) {
		return "contains a NUL byte"
	}
	c := path.Clean(v)
	switch {
	case c != v:
		return fmt.Sprintf("not a clean path (want %q)", c)
	case c == ".." || strings.HasPrefix(c, "../"):
		return `escapes the image with ".."`
	case c == "." || c == "/":
		return "names a folder, not a file"
	}
	return ""
}

// validateCmdline checks kernel arguments "key[=value]": no quoting, so no
// whitespace or quotes, and no '=' in keys.
func validateCmdline(p *field.Path, args map[string]string) field.ErrorList {
	var errs field.ErrorList
	total := 0
	for _, k := range sortedKeys(args) {
		v := args[k]
		kp := p.Key(k)
		if k == "" {
			errs = append(errs, field.Invalid(kp, k, "empty argument name"))
		} else if msg := cmdlineProblem(k, true); msg != "" {
			errs = append(errs, field.Invalid(kp, k, "name "+msg))
		}
		if msg := cmdlineProblem(v, false); msg != "" {
			errs = append(errs, field.Invalid(kp, v, "value "+msg))
		}
		total += len(k) + 1
		if v != "" {
			total += len(v) + 1
		}
	}
	if total > flvalidate.MaxCmdlineBytes {
		errs = append(errs, field.TooLong(p, total, flvalidate.MaxCmdlineBytes))
	}
	return errs
}

func cmdlineProblem(s string, key bool) string {
	for _, r := range s {
		switch {
		case key && r == '=':
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

// guestIfNameProblem: the guest's name for the device (eth0, eth1...).
func guestIfNameProblem(s string) string {
	if len(s) > maxIfNameLen {
		return fmt.Sprintf("longer than %d characters", maxIfNameLen)
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') {
			return "not a guest interface name (lower case letters and digits, like eth1)"
		}
	}
	return ""
}

// parseGuestMAC returns the canonical form of a unicast Ethernet address,
// or a problem.
func parseGuestMAC(s string) (string, string) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", "not a MAC address like 02:00:00:00:00:01"
	}
	if hw[0]&1 == 1 {
		return "", "a multicast address; the first octet must be even"
	}
	if slices.Equal(hw, net.HardwareAddr{0, 0, 0, 0, 0, 0}) {
		return "", "the all-zero address is not usable"
	}
	return hw.String(), ""
}

// cidrProblem checks "IP/prefix-length", the interface's address in its
// subnet.
func cidrProblem(s string) string {
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		return "not a CIDR address like 192.168.1.10/24"
	}
	if pfx.Addr().IsUnspecified() || pfx.Addr().IsMulticast() {
		return fmt.Sprintf("%s is not a host address", pfx.Addr())
	}
	return ""
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
