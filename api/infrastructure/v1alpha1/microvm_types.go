package v1alpha1

// MicrovmSpec is the microVM a MicrovmMachine asks a flintlock host for. Its
// fields map onto flintlock's MicroVMSpec.
type MicrovmSpec struct {
	// provider is the name of the flintlock VMM provider to use (for example
	// "qemu" or "firecracker"); the host's default when empty.
	// +optional
	Provider string `json:"provider,omitempty"`

	// vcpu is the number of virtual CPUs of the microVM.
	// +required
	// +kubebuilder:validation:Minimum=1
	VCPU int32 `json:"vcpu"`

	// memoryMb is the memory of the microVM in MiB.
	// +required
	// +kubebuilder:validation:Minimum=1024
	MemoryMb int32 `json:"memoryMb"`

	// rootVolume is the volume holding the guest's root filesystem.
	// +required
	RootVolume Volume `json:"rootVolume"`

	// volumes are additional volumes attached to the microVM.
	// +optional
	// +listType=map
	// +listMapKey=id
	// +kubebuilder:validation:MaxItems=32
	AdditionalVolumes []AdditionalVolume `json:"volumes,omitempty"`

	// kernel is the image and file of the guest kernel.
	// +required
	Kernel ContainerFileSource `json:"kernel"`

	// kernelCmdline holds extra kernel arguments: key=value, or just key for
	// an empty value.
	// +optional
	KernelCmdLine map[string]string `json:"kernelCmdline,omitempty"`

	// initrd is an optional initial ramdisk.
	// +optional
	Initrd *ContainerFileSource `json:"initrd,omitempty"`

	// networkInterfaces are the guest's network interfaces; at least one.
	// +required
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +listType=map
	// +listMapKey=guestDeviceName
	NetworkInterfaces []NetworkInterface `json:"networkInterfaces"`

	// labels are set on the microVM on its host.
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
}

// ContainerFileSource is a file inside an OCI image (a kernel or an initrd).
type ContainerFileSource struct {
	// image is the OCI image reference.
	// +required
	// +kubebuilder:validation:MinLength=1
	Image string `json:"image"`

	// filename is the path of the file inside the image; the provider's
	// default when empty.
	// +optional
	Filename string `json:"filename,omitempty"`
}

// Volume is the root volume of a microVM, made from an OCI image.
type Volume struct {
	// id identifies the volume within the microVM.
	// +required
	// +kubebuilder:validation:MinLength=1
	ID string `json:"id"`

	// image is the OCI image the volume is made from.
	// +required
	// +kubebuilder:validation:MinLength=1
	Image string `json:"image"`

	// readOnly attaches the volume read-only.
	// +optional
	// +kubebuilder:default=false
	ReadOnly bool `json:"readOnly,omitempty"`

	// mountPoint is where the guest mounts the volume.
	// +optional
	MountPoint string `json:"mountPoint,omitempty"`
}

// AdditionalVolume is a non-root volume: the root volume's shape, with either
// an OCI image or a host folder shared over virtio-fs as its source.
// +kubebuilder:validation:XValidation:rule="has(self.image) != has(self.virtiofsPath)",message="exactly one of image or virtiofsPath must be set"
type AdditionalVolume struct {
	// id identifies the volume within the microVM.
	// +required
	// +kubebuilder:validation:MinLength=1
	ID string `json:"id"`

	// image is the OCI image the volume is made from.
	// +optional
	// +kubebuilder:validation:MinLength=1
	Image string `json:"image,omitempty"`

	// readOnly attaches the volume read-only.
	// +optional
	// +kubebuilder:default=false
	ReadOnly bool `json:"readOnly,omitempty"`

	// mountPoint is where the guest mounts the volume.
	// +optional
	MountPoint string `json:"mountPoint,omitempty"`

	// virtiofsPath is a folder of the host shared with the guest over
	// virtio-fs, instead of an image.
	// +optional
	// +kubebuilder:validation:MinLength=1
	VirtiofsPath string `json:"virtiofsPath,omitempty"`
}

// IfaceType is the kind of host device backing a guest network interface.
// +kubebuilder:validation:Enum=macvtap;tap
type IfaceType string

const (
	// IfaceTypeMacvtap backs the interface with a macvtap device on the
	// host's parent interface.
	IfaceTypeMacvtap IfaceType = "macvtap"
	// IfaceTypeTap backs the interface with a tap device.
	IfaceTypeTap IfaceType = "tap"
)

// NetworkInterface is a network interface of the guest.
type NetworkInterface struct {
	// guestDeviceName is the interface's name inside the guest, e.g. eth1.
	// +required
	// +kubebuilder:validation:MinLength=1
	GuestDeviceName string `json:"guestDeviceName"`

	// guestMac is the interface's MAC address; generated when empty.
	// +optional
	GuestMAC string `json:"guestMac,omitempty"`

	// type is the host device type: macvtap or tap.
	// +required
	Type IfaceType `json:"type"`

	// address is a static address in CIDR notation; DHCP when empty.
	// +optional
	Address string `json:"address,omitempty"`
}

// SSHPublicKey is a set of authorized SSH keys for one guest user.
type SSHPublicKey struct {
	// user is the guest user the keys are authorized for; the image's
	// default user when empty.
	// +optional
	User string `json:"user,omitempty"`

	// authorizedKeys are the public keys, in authorized_keys format.
	// +optional
	// +listType=atomic
	AuthorizedKeys []string `json:"authorizedKeys,omitempty"`
}

// VMState is the state of a microVM as CAPMVM reports it.
// +kubebuilder:validation:Enum=pending;running;failed;deleted;unknown
type VMState string

const (
	// VMStatePending means the microVM is being created or started.
	VMStatePending VMState = "pending"
	// VMStateRunning means the microVM has been created and is running.
	VMStateRunning VMState = "running"
	// VMStateFailed means the host failed to create or run the microVM.
	VMStateFailed VMState = "failed"
	// VMStateDeleted means the microVM is being deleted or is gone.
	VMStateDeleted VMState = "deleted"
	// VMStateUnknown means the host reported a state CAPMVM does not know.
	VMStateUnknown VMState = "unknown"
)
