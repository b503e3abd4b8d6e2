package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/images"
	"github.com/liquidmetal-go/liquidmetal/internal/metadata"
	"github.com/liquidmetal-go/liquidmetal/internal/store"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

// Failure reasons recorded in MicroVMStatus.failure_reason.
const (
	ReasonKernel      = "KernelFailed"
	ReasonInitrd      = "InitrdFailed"
	ReasonVolume      = "VolumeFailed"
	ReasonMetadata    = "MetadataFailed"
	ReasonNetwork     = "NetworkFailed"
	ReasonVMMStart    = "VMMStartFailed"
	ReasonVMMExited   = "VMMExited"
	ReasonProvider    = "ProviderUnavailable"
	ReasonUnsupported = "UnsupportedFeature"
	ReasonRetriesOut  = "RetriesExhausted"
)

// Files of a VM's folder.
const (
	kernelFile = "kernel"
	initrdFile = "initrd"
	cidataFile = "cidata.img"
	volumesDir = "volumes"
)

// create runs the create plan of a PENDING or CREATED VM.
func (r *Reconciler) create(ctx context.Context, log *slog.Logger, vm *types.MicroVM) (bool, error) {
	spec := vm.Spec
	uid := spec.GetUid()
	p, ok := r.cfg.Providers[spec.GetProvider()]
	if !ok {
		return false, r.fail(ctx, log, vm, ReasonProvider, fmt.Errorf("provider %q is not available on this host", spec.GetProvider()))
	}
	if err := checkCapabilities(p, spec); err != nil {
		return false, r.fail(ctx, log, vm, ReasonUnsupported, err)
	}
	b := &builder{r: r, vm: vm, dir: r.vmDir(spec), provider: p}
	stopped := store.DetailedState(vm.GetStatus()) == types.MicroVMStatus_STOPPED
	if stopped {
		b.restart = true // a Start (power.go): its VMM's exit was asked for
	} else if handled, err := r.supervise(ctx, log, b); handled || err != nil {
		// A VMM that ended or a dead guest: the restart policy (supervise.go).
		return false, err
	}
	var after func(string)
	if r.cfg.AfterStep != nil {
		after = func(step string) { r.cfg.AfterStep(uid, step) }
	}
	err := runPlan(ctx, b.plan(), after)
	if err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		reason := ReasonRetriesOut
		var se *stepError
		var ee exitedError
		switch {
		case errors.As(err, &ee):
			reason = ReasonVMMExited
		case errors.As(err, &se):
			reason = se.reason
		}
		tries := vm.GetStatus().GetRetry() + 1
		if isPermanent(err) || int(tries) >= r.cfg.MaxRetries {
			return false, r.fail(ctx, log, vm, reason, err)
		}
		log.Warn("create step failed; will retry", "try", tries, "reason", reason, "err", err)
		return true, r.setStatus(ctx, uid, func(st *types.MicroVMStatus) {
			st.Retry = tries
			st.FailureReason = reason
			st.FailureMessage = err.Error()
		})
	}
	wasCreated := vm.GetStatus().GetState() == types.MicroVMStatus_CREATED
	if err := r.setStatus(ctx, uid, func(st *types.MicroVMStatus) {
		b.fillStatus(st)
		st.State = types.MicroVMStatus_CREATED
		st.DetailedState = types.MicroVMStatus_RUNNING
		st.Retry = 0
		st.FailureReason, st.FailureMessage = "", ""
		st.ObservedVersion = vm.GetVersion()
	}); err != nil {
		return false, err
	}
	switch {
	case !wasCreated:
		log.Info("microvm created", "pid", b.vmmStatus.Pid)
	case stopped:
		log.Info("microvm started", "pid", b.vmmStatus.Pid)
	}
	r.watchExit(uid, b.dir, p)
	return false, nil
}

// builder builds the create plan of one VM.
type builder struct {
	r        *Reconciler
	vm       *types.MicroVM
	dir      string
	provider vmm.Provider

	leaseCtx  context.Context // ctx carrying the VM's containerd lease, once taken
	vmmStatus vmm.Status
	devices   map[string]*types.NetworkInterfaceStatus
	docs      map[string][]byte // the cloud-init documents, once built
	restart   bool              // the restart policy restarts the VMM
}

func (b *builder) path(name string) string { return filepath.Join(b.dir, name) }

func (b *builder) volumePath(id string) string {
	return filepath.Join(b.dir, volumesDir, id+".img")
}

// leased returns a context under the VM's containerd lease, creating the
// lease the first time.
func (b *builder) leased(ctx context.Context) (context.Context, error) {
	if b.leaseCtx != nil {
		return b.leaseCtx, nil
	}
	lctx, err := b.r.cfg.Images.EnsureLease(ctx, b.vm.Spec.GetUid())
	if err != nil {
		return nil, err
	}
	b.leaseCtx = lctx
	return lctx, nil
}

func (b *builder) plan() []step {
	spec := b.vm.Spec
	steps := []step{{
		name: "folder", reason: ReasonVMMStart,
		needed: func(context.Context) (bool, error) { return missing(filepath.Join(b.dir, volumesDir)) },
		do:     func(context.Context) error { return os.MkdirAll(filepath.Join(b.dir, volumesDir), 0o750) },
	}, {
		name: "kernel", reason: ReasonKernel,
		needed: func(context.Context) (bool, error) { return missing(b.path(kernelFile)) },
		do: func(ctx context.Context) error {
			return b.copyFromImage(ctx, spec.GetKernel().GetImage(), spec.GetKernel().GetFilename(), b.path(kernelFile), b.copyKernel)
		},
	}}
	if spec.Initrd != nil {
		steps = append(steps, step{
			name: "initrd", reason: ReasonInitrd,
			needed: func(context.Context) (bool, error) { return missing(b.path(initrdFile)) },
			do: func(ctx context.Context) error {
				return b.copyFromImage(ctx, spec.GetInitrd().GetImage(), spec.GetInitrd().GetFilename(), b.path(initrdFile), b.r.cfg.Images.CopyInitrd)
			},
		})
	}
	for _, v := range b.volumes() {
		if isShared(v) {
			continue // a host folder: nothing to build
		}
		steps = append(steps, step{
			name: "volume " + v.GetId(), reason: ReasonVolume,
			needed: func(context.Context) (bool, error) { return missing(b.volumePath(v.GetId())) },
			do:     func(ctx context.Context) error { return b.buildVolume(ctx, v) },
		})
	}
	steps = append(steps, step{
		name: "network interfaces", reason: ReasonNetwork,
		do: b.ensureInterfaces,
	}, step{
		name: "cloud-init data", reason: ReasonMetadata,
		needed: func(context.Context) (bool, error) { return missing(b.path(cidataFile)) },
		do:     b.writeCIData,
	}, step{
		// Every pass: a restarted flintlockd's metadata service starts
		// empty, and registering again only replaces the data.
		name: "metadata service", reason: ReasonMetadata,
		do: b.registerMetadata,
	}, step{
		name: "vmm", reason: ReasonVMMStart,
		needed: b.vmmNeeded,
		do:     b.startVMM,
	})
	return steps
}

// volumes lists the VM's volumes in attachment order: root first.
func (b *builder) volumes() []*types.Volume {
	var vs []*types.Volume
	if rv := b.vm.Spec.GetRootVolume(); rv != nil {
		vs = append(vs, rv)
	}
	return append(vs, b.vm.Spec.GetAdditionalVolumes()...)
}

// copyFn copies a file (or the image's default one when filename is empty)
// out of an image.
type copyFn func(ctx context.Context, uid string, img images.Image, filename, dst string) (string, error)

func (b *builder) copyFromImage(ctx context.Context, ref, filename, dst string, copyFile copyFn) error {
	lctx, err := b.leased(ctx)
	if err != nil {
		return err
	}
	img, err := b.r.cfg.Images.Pull(lctx, ref)
	if err != nil {
		return err
	}
	_, err = copyFile(lctx, b.vm.Spec.GetUid(), img, filename, dst)
	return err
}

// uncompressedKernelPaths are tried, in order, for a provider that boots
// only an uncompressed kernel when the spec names no file.
var uncompressedKernelPaths = []string{"boot/vmlinux", "vmlinux"}

// kernelPaths are the paths of the kernel in its image, tried in order: the
// file the spec names, else the image's defaults, where providers that boot
// only an uncompressed ELF vmlinux get boot/vmlinux (the provider checks
// the format when it starts).
func kernelPaths(filename string, caps vmm.Capabilities) []string {
	switch {
	case filename != "":
		return []string{filename}
	case caps.UncompressedKernel:
		return uncompressedKernelPaths
	}
	return images.KernelPaths
}

func (b *builder) copyKernel(ctx context.Context, uid string, img images.Image, filename, dst string) (string, error) {
	return b.r.cfg.Images.CopyFirst(ctx, uid, img, kernelPaths(filename, b.provider.Capabilities()), dst)
}

// buildVolume makes the VM's copy-on-write volume v (volumes.go).
func (b *builder) buildVolume(ctx context.Context, v *types.Volume) error {
	return b.provisionVolume(ctx, v)
}

// documents are the VM's cloud-init documents, as the NoCloud disk, the
// metadata service and the VMM's own metadata store (Firecracker's MMDS)
// serve them. Interfaces get the guest MACs chosen for them, so a
// generated network-config matches them: call after ensureInterfaces.
func (b *builder) documents() (map[string][]byte, error) {
	if b.docs != nil {
		return b.docs, nil
	}
	spec := proto.CloneOf(b.vm.Spec)
	for _, iface := range spec.GetInterfaces() {
		if d := b.devices[iface.GetDeviceId()]; d != nil && iface.GetGuestMac() == "" {
			iface.GuestMac = &d.MacAddress
		}
	}
	docs, err := metadata.Documents(spec)
	if err != nil {
		return nil, permanent(err)
	}
	if err := withVolumeMounts(spec, docs); err != nil {
		return nil, permanent(err)
	}
	b.docs = docs
	return docs, nil
}

// writeCIData writes the NoCloud disk.
func (b *builder) writeCIData(context.Context) error {
	docs, err := b.documents()
	if err != nil {
		return err
	}
	return metadata.WriteCIDataDisk(docs, b.path(cidataFile))
}

// registerMetadata registers the VM's TAP devices and documents with the
// metadata service. A macvtap's traffic never reaches the host's stack:
// VMs with only macvtaps (or none) keep the NoCloud disk alone.
func (b *builder) registerMetadata(context.Context) error {
	if b.r.cfg.Metadata == nil {
		return nil
	}
	var taps []string
	for _, iface := range b.vm.Spec.GetInterfaces() {
		if d := b.devices[iface.GetDeviceId()]; d != nil && iface.GetType() != types.NetworkInterface_MACVTAP {
			taps = append(taps, d.HostDeviceName)
		}
	}
	if len(taps) == 0 {
		return nil
	}
	docs, err := b.documents()
	if err != nil {
		return err
	}
	err = b.r.cfg.Metadata.Register(b.vm.Spec.GetUid(), taps, docs)
	if errdefs.IsInvalidArgument(err) {
		return permanent(err)
	}
	return err
}

func (b *builder) ensureInterfaces(ctx context.Context) error {
	b.devices = map[string]*types.NetworkInterfaceStatus{}
	for i, iface := range b.vm.Spec.GetInterfaces() {
		if b.r.cfg.Network == nil {
			return permanent(fmt.Errorf("interfaces[%d]: %w: host networking is not configured", i, errdefs.ErrFailedPrecondition))
		}
		d, err := b.r.cfg.Network.Ensure(ctx, b.vm.Spec.GetUid(), i, iface)
		if errdefs.IsFailedPrecondition(err) {
			return permanent(err)
		}
		if err != nil {
			return err
		}
		b.devices[iface.GetDeviceId()] = &types.NetworkInterfaceStatus{
			HostDeviceName: d.Name, Index: int32(d.Index), MacAddress: d.MAC,
		}
	}
	return nil
}

func (b *builder) vmmNeeded(ctx context.Context) (bool, error) {
	st, err := b.provider.Status(ctx, b.vm.Spec.GetUid(), b.dir)
	if err != nil {
		return false, err
	}
	b.vmmStatus = st
	switch st.State {
	case vmm.StateRunning, vmm.StatePaused:
		return false, nil
	case vmm.StateExited:
		if b.vm.GetStatus().GetState() == types.MicroVMStatus_CREATED && !b.restart {
			reason := st.Reason
			if reason == "" {
				reason = "the VMM process exited"
			}
			return false, permanent(exitedError(reason))
		}
	}
	return true, nil
}

func (b *builder) startVMM(ctx context.Context) error {
	spec := b.vm.Spec
	vm := vmm.VM{
		UID:         spec.GetUid(),
		Namespace:   spec.GetNamespace(),
		Name:        spec.GetId(),
		Dir:         b.dir,
		VCPU:        int(spec.GetVcpu()),
		MemoryMB:    int(spec.GetMemoryInMb()),
		KernelPath:  b.path(kernelFile),
		Cmdline:     b.cmdline(),
		StartPaused: b.r.cfg.StartPaused,
		GuestAgent:  spec.GetAllowGuestAgent(),
	}
	if spec.Initrd != nil {
		vm.InitrdPath = b.path(initrdFile)
	}
	docs, err := b.documents()
	if err != nil {
		return err
	}
	vm.Metadata = docs
	for _, v := range b.volumes() {
		if isShared(v) {
			vm.SharedDirs = append(vm.SharedDirs, vmm.SharedDir{Tag: v.GetId(), HostPath: v.GetSource().GetVirtiofsSource(), ReadOnly: v.GetIsReadOnly()})
			continue
		}
		vm.Disks = append(vm.Disks, vmm.Disk{ID: v.GetId(), Path: b.volumePath(v.GetId()), ReadOnly: v.GetIsReadOnly(), Format: diskFormat(b.volumePath(v.GetId()))})
	}
	vm.Disks = append(vm.Disks, vmm.Disk{ID: "cidata", Path: b.path(cidataFile), ReadOnly: true, Format: "raw"})
	for i, iface := range spec.GetInterfaces() {
		d := b.devices[iface.GetDeviceId()]
		if d == nil {
			return fmt.Errorf("interfaces[%d]: host device not ready", i)
		}
		vm.Nets = append(vm.Nets, vmm.NetDevice{
			HostDevice: d.HostDeviceName, HostIndex: int(d.Index), GuestMAC: d.MacAddress,
			MacVTap: iface.GetType() == types.NetworkInterface_MACVTAP,
		})
	}
	st, err := b.provider.Start(ctx, vm)
	if err != nil {
		return err
	}
	b.vmmStatus = st
	return nil
}

// cmdline is the guest kernel command line: flintlockd's defaults, then the
// spec's arguments, which replace defaults of the same key.
func (b *builder) cmdline() string {
	args := map[string]string{"console": "ttyS0", "reboot": "k", "panic": "1"}
	switch rv := b.vm.Spec.GetRootVolume(); {
	case rv == nil:
	case isShared(rv): // mounted by its virtio-fs tag
		args["root"] = rv.GetId()
		args["rootfstype"] = "virtiofs"
		args["rw"] = ""
	default:
		args["root"] = "/dev/vda"
		args["rw"] = ""
	}
	for k, v := range b.vm.Spec.GetKernel().GetCmdline() {
		args[k] = v
	}
	keys := make([]string, 0, len(args))
	for k := range args {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		if args[k] == "" {
			parts = append(parts, k)
		} else {
			parts = append(parts, k+"="+args[k])
		}
	}
	return strings.Join(parts, " ")
}

// fillStatus records where the VM's parts live on the host.
func (b *builder) fillStatus(st *types.MicroVMStatus) {
	st.KernelMount = &types.Mount{Type: types.Mount_HOSTPATH, Source: b.path(kernelFile)}
	if b.vm.Spec.Initrd != nil {
		st.InitrdMount = &types.Mount{Type: types.Mount_HOSTPATH, Source: b.path(initrdFile)}
	}
	st.Volumes = map[string]*types.VolumeStatus{}
	for _, v := range b.volumes() {
		src := b.volumePath(v.GetId())
		if isShared(v) {
			src = v.GetSource().GetVirtiofsSource()
		}
		st.Volumes[v.GetId()] = &types.VolumeStatus{Mount: &types.Mount{Type: types.Mount_HOSTPATH, Source: src}}
	}
	st.NetworkInterfaces = b.devices
	st.VmmPid = int32(b.vmmStatus.Pid)
}

// exitedError is a VMM that exited after its VM was CREATED.
type exitedError string

func (e exitedError) Error() string { return "vmm exited: " + string(e) }

func missing(path string) (bool, error) {
	_, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	return false, err
}
