package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
)

// MicrovmMachineTemplateSpec is the desired state of a MicrovmMachineTemplate.
type MicrovmMachineTemplateSpec struct {
	// template is the MicrovmMachine that machines made from this template
	// get.
	// +required
	Template MicrovmMachineTemplateResource `json:"template"`
}

// MicrovmMachineTemplateResource is the metadata and spec of a MicrovmMachine
// made from a template.
type MicrovmMachineTemplateResource struct {
	// metadata is given to the MicrovmMachines made from the template.
	// +optional
	ObjectMeta clusterv1.ObjectMeta `json:"metadata,omitempty,omitzero"`

	// spec is the spec of the MicrovmMachines made from the template.
	// +required
	Spec MicrovmMachineSpec `json:"spec"`
}

// MicrovmMachineTemplateStatus is the observed state of a
// MicrovmMachineTemplate: what a machine made from it offers, for the cluster
// autoscaler's scaling from zero.
type MicrovmMachineTemplateStatus struct {
	// capacity is the resources of a machine made from the template (cpu,
	// memory).
	// +optional
	Capacity corev1.ResourceList `json:"capacity,omitempty"`

	// nodeInfo is the architecture and operating system of such a machine.
	// +optional
	NodeInfo NodeInfo `json:"nodeInfo,omitempty,omitzero"`
}

// Architecture is a node's CPU architecture.
// +kubebuilder:validation:Enum=amd64;arm64;s390x;ppc64le
type Architecture string

const (
	// ArchitectureAmd64 is x86-64.
	ArchitectureAmd64 Architecture = "amd64"
	// ArchitectureArm64 is 64-bit ARM.
	ArchitectureArm64 Architecture = "arm64"
	// ArchitectureS390x is IBM Z.
	ArchitectureS390x Architecture = "s390x"
	// ArchitecturePpc64le is little-endian 64-bit POWER.
	ArchitecturePpc64le Architecture = "ppc64le"
)

// NodeInfo is the architecture and operating system of a node.
// +kubebuilder:validation:MinProperties=1
type NodeInfo struct {
	// architecture is the node's CPU architecture.
	// +optional
	Architecture Architecture `json:"architecture,omitempty"`

	// operatingSystem is the node's operating system, e.g. linux.
	// +optional
	OperatingSystem string `json:"operatingSystem,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:resource:path=microvmmachinetemplates,scope=Namespaced,categories=cluster-api,shortName=mvmmt
// +kubebuilder:storageversion
// +kubebuilder:subresource:status
// +kubebuilder:metadata:labels="cluster.x-k8s.io/v1beta2=v1alpha1"
// +kubebuilder:printcolumn:name="Age",type="date",JSONPath=".metadata.creationTimestamp"

// MicrovmMachineTemplate is the template of the MicrovmMachines of a
// MachineDeployment, MachineSet or control plane.
type MicrovmMachineTemplate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired state.
	// +required
	Spec MicrovmMachineTemplateSpec `json:"spec"`

	// status is the observed state.
	// +optional
	Status MicrovmMachineTemplateStatus `json:"status,omitempty,omitzero"`
}

// +kubebuilder:object:root=true

// MicrovmMachineTemplateList is a list of MicrovmMachineTemplates.
type MicrovmMachineTemplateList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MicrovmMachineTemplate `json:"items"`
}

func init() {
	objectTypes = append(objectTypes, &MicrovmMachineTemplate{}, &MicrovmMachineTemplateList{})
}
