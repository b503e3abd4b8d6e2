package controller

import (
	"encoding/base64"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"strings"

	"github.com/containerd/errdefs"
	"k8s.io/utils/ptr"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/yaml"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// Annotations and labels CAPMVM writes.
const (
	// HostAnnotation on a MicrovmMachine records the host chosen for its
	// microVM, written (with CreateAttemptAnnotation, under optimistic
	// locking) before the microVM is requested; the choice never changes
	// afterwards. spec.providerID names the host too once the flintlock uid
	// is known.
	HostAnnotation = "microvmmachine.infrastructure.cluster.x-k8s.io/host"
	// CreateAttemptAnnotation holds the time (RFC 3339) a reconcile won the
	// right to call CreateMicroVM. While it is younger than the create
	// lease no other reconcile calls CreateMicroVM for the machine.
	CreateAttemptAnnotation = "microvmmachine.infrastructure.cluster.x-k8s.io/create-attempt"

	// MachineUIDLabel on a microVM is the uid of the MicrovmMachine it
	// belongs to: CAPMVM adopts a microVM found by name only when it
	// carries this label.
	MachineUIDLabel = "infrastructure.cluster.x-k8s.io/microvmmachine-uid"

	// Platform is the meta-data "platform" value of CAPMVM's microVMs.
	Platform = "liquid_metal"

	providerIDPrefix = "microvm://"
)

// ProviderID formats a machine's provider ID, microvm://<host>/<uid>: the
// kubelet of the node builds the same string from the meta-data keys
// vm_host and instance_id.
func ProviderID(host, uid string) string { return providerIDPrefix + host + "/" + uid }

// ParseProviderID splits microvm://<host>/<uid>.
func ParseProviderID(id string) (host, uid string, err error) {
	rest, ok := strings.CutPrefix(id, providerIDPrefix)
	i := strings.LastIndex(rest, "/")
	if !ok || i <= 0 || i == len(rest)-1 {
		return "", "", fmt.Errorf("provider ID %q is not microvm://<host>/<uid>: %w", id, errdefs.ErrInvalidArgument)
	}
	return rest[:i], rest[i+1:], nil
}

// vmInput is what a microVM's create request is built from.
type vmInput struct {
	machine     *infrav1.MicrovmMachine
	clusterName string
	host        string
	// sshKeys are the machine's keys, or the cluster's when it has none.
	sshKeys []infrav1.SSHPublicKey
	// userData is the bootstrap data (cloud-config).
	userData []byte
}

// microvmSpec turns a MicrovmMachine into flintlock's MicroVMSpec: the
// microVM is named like the machine, in the machine's namespace, labelled
// with the machine's uid, and carries the cloud-init documents (base64).
// instance_id is left out of meta-data: flintlockd adds it, set to the uid
// it assigns, which is the uid in the machine's provider ID.
func microvmSpec(in vmInput) (*types.MicroVMSpec, error) {
	m := in.machine
	s := m.Spec.MicrovmSpec
	labels := maps.Clone(s.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[MachineUIDLabel] = string(m.UID)
	if in.clusterName != "" {
		labels[clusterv1.ClusterNameLabel] = in.clusterName
	}

	spec := &types.MicroVMSpec{
		Id:         m.Name,
		Namespace:  m.Namespace,
		Labels:     labels,
		Vcpu:       s.VCPU,
		MemoryInMb: s.MemoryMb,
		Kernel: &types.Kernel{
			Image:   s.Kernel.Image,
			Cmdline: maps.Clone(s.KernelCmdLine),
			// flintlockd writes a network-config for the interfaces, as
			// upstream CAPMVM asked.
			AddNetworkConfig: true,
		},
		RootVolume: &types.Volume{
			Id:         s.RootVolume.ID,
			IsReadOnly: s.RootVolume.ReadOnly,
			Source:     &types.VolumeSource{ContainerSource: ptr.To(s.RootVolume.Image)},
		},
	}
	if s.Provider != "" {
		spec.Provider = ptr.To(s.Provider)
	}
	if s.Kernel.Filename != "" {
		spec.Kernel.Filename = ptr.To(s.Kernel.Filename)
	}
	if s.Initrd != nil {
		spec.Initrd = &types.Initrd{Image: s.Initrd.Image}
		if s.Initrd.Filename != "" {
			spec.Initrd.Filename = ptr.To(s.Initrd.Filename)
		}
	}
	if s.RootVolume.MountPoint != "" {
		spec.RootVolume.MountPoint = ptr.To(s.RootVolume.MountPoint)
	}
	for _, v := range s.AdditionalVolumes {
		vol := &types.Volume{Id: v.ID, IsReadOnly: v.ReadOnly, Source: &types.VolumeSource{}}
		if v.MountPoint != "" {
			vol.MountPoint = ptr.To(v.MountPoint)
		}
		switch {
		case v.Image != "":
			vol.Source.ContainerSource = ptr.To(v.Image)
		case v.VirtiofsPath != "":
			vol.Source.VirtiofsSource = ptr.To(v.VirtiofsPath)
		}
		spec.AdditionalVolumes = append(spec.AdditionalVolumes, vol)
	}
	for _, nic := range s.NetworkInterfaces {
		iface := &types.NetworkInterface{DeviceId: nic.GuestDeviceName}
		switch nic.Type {
		case infrav1.IfaceTypeTap:
			iface.Type = types.NetworkInterface_TAP
		case infrav1.IfaceTypeMacvtap:
			iface.Type = types.NetworkInterface_MACVTAP
		default:
			return nil, fmt.Errorf("interface %s: unknown type %q: %w", nic.GuestDeviceName, nic.Type, errdefs.ErrInvalidArgument)
		}
		if nic.GuestMAC != "" {
			iface.GuestMac = ptr.To(nic.GuestMAC)
		}
		if nic.Address != "" {
			iface.Address = &types.StaticAddress{Address: nic.Address}
		}
		spec.Interfaces = append(spec.Interfaces, iface)
	}

	docs, err := cloudInit(in)
	if err != nil {
		return nil, err
	}
	spec.Metadata = map[string]string{}
	for name, doc := range docs {
		spec.Metadata[name] = base64.StdEncoding.EncodeToString(doc)
	}
	return spec, nil
}

// metaData is the meta-data document. The kubeadm templates build the
// kubelet's provider ID from vm_host and instance_id.
type metaData struct {
	LocalHostname string `json:"local_hostname"`
	Platform      string `json:"platform"`
	VMHost        string `json:"vm_host"`
	ClusterName   string `json:"cluster_name,omitempty"`
}

// vendorData is the cloud-config vendor-data: the host name and SSH keys.
type vendorData struct {
	Hostname          string   `json:"hostname"`
	SSHAuthorizedKeys []string `json:"ssh_authorized_keys,omitempty"`
	Users             []any    `json:"users,omitempty"`
	FinalMessage      string   `json:"final_message,omitempty"`
}

type cloudUser struct {
	Name              string   `json:"name"`
	SSHAuthorizedKeys []string `json:"ssh_authorized_keys"`
}

// cloudInit builds meta-data, user-data and vendor-data.
func cloudInit(in vmInput) (map[string][]byte, error) {
	md, err := yaml.Marshal(metaData{
		LocalHostname: in.machine.Name,
		Platform:      Platform,
		VMHost:        in.host,
		ClusterName:   in.clusterName,
	})
	if err != nil {
		return nil, fmt.Errorf("meta-data: %w", err)
	}

	vd := vendorData{
		Hostname:     in.machine.Name,
		FinalMessage: "The Liquid Metal microVM " + in.machine.Name + " is up after $UPTIME seconds",
	}
	var users []any
	for _, k := range in.sshKeys {
		if len(k.AuthorizedKeys) == 0 {
			continue
		}
		if k.User == "" {
			// The image's default user.
			vd.SSHAuthorizedKeys = append(vd.SSHAuthorizedKeys, k.AuthorizedKeys...)
			continue
		}
		users = append(users, cloudUser{Name: k.User, SSHAuthorizedKeys: k.AuthorizedKeys})
	}
	if len(users) > 0 {
		// "default" keeps the image's default user next to the named ones.
		vd.Users = append([]any{"default"}, users...)
	}
	vdYAML, err := yaml.Marshal(vd)
	if err != nil {
		return nil, fmt.Errorf("vendor-data: %w", err)
	}
	return map[string][]byte{
		"meta-data":   md,
		"user-data":   in.userData,
		"vendor-data": append([]byte("#cloud-config\n"), vdYAML...),
	}, nil
}

// machineAddresses reports the microVM's addresses: its host name, every
// static interface address, and, when the microVM has no static address
// (DHCP; flintlock does not report leases), the address of its host.
func machineAddresses(m *infrav1.MicrovmMachine, host string) []clusterv1.MachineAddress {
	out := []clusterv1.MachineAddress{{Type: clusterv1.MachineHostName, Address: m.Name}}
	for _, nic := range m.Spec.NetworkInterfaces {
		if nic.Address == "" {
			continue
		}
		if p, err := netip.ParsePrefix(nic.Address); err == nil {
			out = append(out, clusterv1.MachineAddress{Type: clusterv1.MachineInternalIP, Address: p.Addr().String()})
		} else if a, err := netip.ParseAddr(nic.Address); err == nil {
			out = append(out, clusterv1.MachineAddress{Type: clusterv1.MachineInternalIP, Address: a.String()})
		}
	}
	if len(out) > 1 || host == "" {
		return out
	}
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return append(out, clusterv1.MachineAddress{Type: clusterv1.MachineExternalIP, Address: h})
	}
	return append(out, clusterv1.MachineAddress{Type: clusterv1.MachineExternalDNS, Address: h})
}
