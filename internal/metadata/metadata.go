// Package metadata owns the cloud-init NoCloud data of a microVM: it turns
// the spec's base64 metadata into the documents cloud-init reads (meta-data,
// user-data, vendor-data, network-config and any extra files) and writes them
// to a "cidata" disk image that the VMM attaches as the last disk.
//
// # Documents
//
// cloud-init's NoCloud source only accepts a seed when both meta-data and
// user-data exist; vendor-data and network-config are optional. So:
//   - meta-data is always written. The wire contract says the server adds
//     instance_id: <uid> when the client did not set one; cloud-init itself
//     reads the dashed keys instance-id and local-hostname (without
//     instance-id every VM is "nocloud" to cloud-init), so the dashed keys
//     are added too when absent, copied from instance_id / local_hostname.
//     Existing keys are never changed; a document that needs no key is
//     passed through byte for byte.
//   - a missing user-data becomes "#cloud-config\n": an empty cloud-config
//     that configures nothing. (An empty file would also be accepted, but
//     cloud-init then logs an "Unhandled non-multipart userdata" warning.)
//   - with kernel.add_network_config and no client network-config, a netplan
//     v2 network-config is generated for every interface that has a guest
//     MAC (callers fill guest_mac with the MACs the network package chose).
//
// # The disk: ISO9660 with Rock Ridge
//
// The image is ISO9660 (volume identifier "cidata") with Rock Ridge, as
// genisoimage -rock builds it, because:
//   - Rock Ridge keeps the exact names cloud-init opens (meta-data,
//     user-data: lower case with hyphens); without it Linux shows the
//     8-character ISO names ("meta_dat", "user_dat") and cloud-init finds
//     no seed. Linux reads Rock Ridge by default.
//   - the image is sized to its content (the 32 KiB system area, a few
//     descriptor blocks and the files in 2 KiB blocks), read-only by nature
//     and written in a few milliseconds; FAT needs a file system size fixed
//     up front and keeps lower-case names only as VFAT long names.
//
// The guest kernel needs iso9660 support (built in or the isofs module).
package metadata

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"sort"

	"github.com/containerd/errdefs"
	"sigs.k8s.io/yaml"

	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// Names of the NoCloud documents.
const (
	MetaData      = "meta-data"
	UserData      = "user-data"
	VendorData    = "vendor-data"
	NetworkConfig = "network-config"
)

// Keys in meta-data: the wire contract's (underscore) and cloud-init's own.
const (
	keyInstanceID           = "instance_id"
	keyLocalHostname        = "local_hostname"
	keyCloudInitInstanceID  = "instance-id"
	keyCloudInitLocalHostnm = "local-hostname"
)

// emptyUserData is written when the client gave no user-data.
var emptyUserData = []byte("#cloud-config\n")

// safeName is a file name allowed at the root of the cidata disk.
var safeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$`)

// Documents decodes the spec's metadata and completes it into the set of
// files of the cidata disk, keyed by file name.
func Documents(spec *types.MicroVMSpec) (map[string][]byte, error) {
	if spec == nil {
		return nil, fmt.Errorf("metadata: no spec: %w", errdefs.ErrInvalidArgument)
	}
	uid := spec.GetUid()
	if uid == "" {
		return nil, fmt.Errorf("metadata: spec has no uid: %w", errdefs.ErrInvalidArgument)
	}

	docs := make(map[string][]byte, len(spec.GetMetadata())+2)
	for name, value := range spec.GetMetadata() {
		if !safeName.MatchString(name) {
			return nil, fmt.Errorf("metadata: %q is not a valid file name: %w", name, errdefs.ErrInvalidArgument)
		}
		data, err := decodeBase64(value)
		if err != nil {
			return nil, fmt.Errorf("metadata: %s is not valid base64: %v: %w", name, err, errdefs.ErrInvalidArgument)
		}
		docs[name] = data
	}

	md, err := completeMetaData(docs[MetaData], uid, spec.GetId())
	if err != nil {
		return nil, err
	}
	docs[MetaData] = md

	if _, ok := docs[UserData]; !ok {
		docs[UserData] = bytes.Clone(emptyUserData)
	}

	if _, ok := docs[NetworkConfig]; !ok && spec.GetKernel().GetAddNetworkConfig() {
		nc, err := NetworkConfigFor(spec.GetInterfaces())
		if err != nil {
			return nil, err
		}
		if nc != nil {
			docs[NetworkConfig] = nc
		}
	}
	return docs, nil
}

// decodeBase64 accepts standard base64 with or without padding (clients
// differ).
func decodeBase64(s string) ([]byte, error) {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// completeMetaData adds the instance id (and, for a generated document, the
// host name) keys that are missing. A document that already has every key is
// returned unchanged.
func completeMetaData(doc []byte, uid, name string) ([]byte, error) {
	if doc == nil {
		m := map[string]any{
			keyInstanceID:           uid,
			keyCloudInitInstanceID:  uid,
			keyLocalHostname:        name,
			keyCloudInitLocalHostnm: name,
		}
		if name == "" {
			delete(m, keyLocalHostname)
			delete(m, keyCloudInitLocalHostnm)
		}
		return marshalYAML(m)
	}

	m, err := parseMapping(doc)
	if err != nil {
		return nil, err
	}
	changed := false
	setIfAbsent := func(key string, value any) {
		if _, ok := m[key]; !ok && value != nil {
			m[key] = value
			changed = true
		}
	}
	setIfAbsent(keyInstanceID, uid)
	setIfAbsent(keyCloudInitInstanceID, m[keyInstanceID])
	setIfAbsent(keyCloudInitLocalHostnm, m[keyLocalHostname])
	if !changed {
		return doc, nil
	}
	return marshalYAML(m)
}

// parseMapping reads a YAML mapping, keeping numbers as written. An empty
// document is an empty mapping.
func parseMapping(doc []byte) (map[string]any, error) {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, fmt.Errorf("metadata: meta-data is not valid YAML: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("metadata: meta-data: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	switch t := v.(type) {
	case nil:
		return map[string]any{}, nil
	case map[string]any:
		return t, nil
	default:
		return nil, fmt.Errorf("metadata: meta-data is not a YAML mapping: %w", errdefs.ErrInvalidArgument)
	}
}

func marshalYAML(v any) ([]byte, error) {
	b, err := yaml.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("metadata: encoding YAML: %w", err)
	}
	return b, nil
}

// netplan v2 network-config, as cloud-init reads it.
type netConfig struct {
	Version   int                 `json:"version"`
	Ethernets map[string]ethernet `json:"ethernets"`
}

type ethernet struct {
	Match       match        `json:"match"`
	DHCP4       bool         `json:"dhcp4,omitempty"`
	Addresses   []string     `json:"addresses,omitempty"`
	Routes      []route      `json:"routes,omitempty"`
	Nameservers *nameservers `json:"nameservers,omitempty"`
}

type match struct {
	MACAddress string `json:"macaddress"`
}

type route struct {
	To  string `json:"to"`
	Via string `json:"via"`
}

type nameservers struct {
	Addresses []string `json:"addresses"`
}

// NetworkConfigFor builds a netplan v2 network-config matching each
// interface that has a guest MAC by that MAC: DHCPv4 when the interface has
// no static address, else the address, a default route through the gateway
// and the name servers. It returns nil when no interface has a guest MAC.
//
// The default route is written as 0.0.0.0/0 (or ::/0) rather than netplan's
// "default": cloud-init 22.4 (Debian 12) rejects "default" as "not a valid
// ip network" when it renders v2 config for a non-netplan guest.
func NetworkConfigFor(ifaces []*types.NetworkInterface) ([]byte, error) {
	nc := netConfig{Version: 2, Ethernets: map[string]ethernet{}}
	for i, iface := range ifaces {
		if iface.GetGuestMac() == "" {
			continue
		}
		mac, err := net.ParseMAC(iface.GetGuestMac())
		if err != nil || len(mac) != 6 {
			return nil, fmt.Errorf("metadata: interface %d: invalid guest MAC %q: %w", i, iface.GetGuestMac(), errdefs.ErrInvalidArgument)
		}
		key := iface.GetDeviceId()
		if key == "" {
			key = fmt.Sprintf("eth%d", i)
		}
		if _, dup := nc.Ethernets[key]; dup {
			return nil, fmt.Errorf("metadata: interface %d: duplicate device id %q: %w", i, key, errdefs.ErrInvalidArgument)
		}
		eth := ethernet{Match: match{MACAddress: mac.String()}}
		if sa := iface.GetAddress(); sa != nil {
			if err := staticConfig(&eth, sa); err != nil {
				return nil, fmt.Errorf("metadata: interface %d (%s): %w", i, key, err)
			}
		} else {
			eth.DHCP4 = true
		}
		nc.Ethernets[key] = eth
	}
	if len(nc.Ethernets) == 0 {
		return nil, nil
	}
	return marshalYAML(nc)
}

func staticConfig(eth *ethernet, sa *types.StaticAddress) error {
	prefix, err := netip.ParsePrefix(sa.GetAddress())
	if err != nil {
		return fmt.Errorf("invalid address %q (want CIDR): %w", sa.GetAddress(), errdefs.ErrInvalidArgument)
	}
	eth.Addresses = []string{prefix.String()}
	if gw := sa.GetGateway(); gw != "" {
		addr, err := netip.ParseAddr(gw)
		if err != nil {
			return fmt.Errorf("invalid gateway %q: %w", gw, errdefs.ErrInvalidArgument)
		}
		to := "0.0.0.0/0"
		if addr.Is6() && !addr.Is4In6() {
			to = "::/0"
		}
		eth.Routes = []route{{To: to, Via: addr.String()}}
	}
	if len(sa.GetNameservers()) > 0 {
		ns := &nameservers{}
		for _, s := range sa.GetNameservers() {
			addr, err := netip.ParseAddr(s)
			if err != nil {
				return fmt.Errorf("invalid nameserver %q: %w", s, errdefs.ErrInvalidArgument)
			}
			ns.Addresses = append(ns.Addresses, addr.String())
		}
		eth.Nameservers = ns
	}
	return nil
}

// sortedNames returns the document names in a stable order.
func sortedNames(docs map[string][]byte) []string {
	names := make([]string, 0, len(docs))
	for n := range docs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
