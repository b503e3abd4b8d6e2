package reconcile

import (
	"fmt"
	"iter"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

// MetadataService serves each VM its own cloud-init documents over the
// network (internal/mds). A VM is known by its host TAP devices.
type MetadataService interface {
	// Register makes the documents (by file name: meta-data, user-data,
	// ...) available to requests arriving on devices; registering again
	// replaces them.
	Register(uid string, devices []string, docs map[string][]byte) error
	// Unregister stops serving the VM; an unknown uid is fine.
	Unregister(uid string) error
}

// Admit checks, at API time, that the provider a spec names (defaults
// applied) exists and can run it: a VM asking for a feature its provider
// lacks is errdefs.ErrFailedPrecondition, naming the feature and the
// provider; an interface whose bridge or macvtap parent this host lacks
// is one too, before anything is created.
func (r *Reconciler) Admit(spec *types.MicroVMSpec) error {
	p, ok := r.cfg.Providers[spec.GetProvider()]
	if !ok {
		return fmt.Errorf("provider %q is not available on this host: %w", spec.GetProvider(), errdefs.ErrFailedPrecondition)
	}
	if err := checkCapabilities(p, spec); err != nil {
		return err
	}
	if r.cfg.Network != nil {
		return r.cfg.Network.Check(spec.GetInterfaces())
	}
	return nil
}

// checkCapabilities lists every feature the spec asks for that provider p
// lacks, as one errdefs.ErrFailedPrecondition.
func checkCapabilities(p vmm.Provider, spec *types.MicroVMSpec) error {
	caps := p.Capabilities()
	var lacks []string
	for field, v := range volumeFields(spec) {
		if v.GetSource().GetVirtiofsSource() != "" && !caps.VirtioFS {
			lacks = append(lacks, field+".source.virtiofs_source: virtio-fs host folders")
		}
	}
	for i, iface := range spec.GetInterfaces() {
		if iface.GetType() == types.NetworkInterface_MACVTAP && !caps.MacVTap {
			lacks = append(lacks, fmt.Sprintf("interfaces[%d].type: macvtap interfaces", i))
		}
	}
	if spec.GetAllowGuestAgent() && !caps.GuestAgent {
		lacks = append(lacks, "allow_guest_agent: a guest agent (vsock)")
	}
	if len(lacks) == 0 {
		return nil
	}
	return fmt.Errorf("provider %q does not support %s: %w", p.Name(), strings.Join(lacks, "; "), errdefs.ErrFailedPrecondition)
}

// volumeFields yields the spec's volumes by their field path, root first.
func volumeFields(spec *types.MicroVMSpec) iter.Seq2[string, *types.Volume] {
	return func(yield func(string, *types.Volume) bool) {
		if rv := spec.GetRootVolume(); rv != nil && !yield("root_volume", rv) {
			return
		}
		for i, v := range spec.GetAdditionalVolumes() {
			if !yield(fmt.Sprintf("additional_volumes[%d]", i), v) {
				return
			}
		}
	}
}

// isShared reports whether a volume is a host folder shared over virtio-fs
// rather than a block image built from a container image.
func isShared(v *types.Volume) bool { return v.GetSource().GetVirtiofsSource() != "" }
