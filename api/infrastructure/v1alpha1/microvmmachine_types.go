package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
)

// MachineFinalizer lets the machine controller delete the microVM before a
// MicrovmMachine is removed; existing deployments use this name.
const MachineFinalizer = "microvmmachine.infrastructure.cluster.x-k8s.io"

// MicrovmMachineSpec is the desired state of a MicrovmMachine: the microVM,
// then the machine fields.
type MicrovmMachineSpec struct {
	MicrovmSpec `json:",inline"`

	// sshPublicKeys are authorized in the guest; they take precedence over
	// the cluster's.
	// +optional
	// +listType=atomic
	SSHPublicKeys []SSHPublicKey `json:"sshPublicKeys,omitempty"`

	// providerID is microvm://<host endpoint>/<flintlock uid>, set by the
	// controller once the microVM has been requested.
	// +optional
	ProviderID string `json:"providerID,omitempty"`
}

// MicrovmMachineStatus is the observed state of a MicrovmMachine.
type MicrovmMachineStatus struct {
	// initialization reports the provisioning of the machine's
	// infrastructure (Cluster API v1beta2 contract).
	// +optional
	Initialization MicrovmMachineInitializationStatus `json:"initialization,omitempty,omitzero"`

	// conditions are the observations of the machine's state; see the
	// MicrovmMachine condition constants.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=32
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// addresses are the microVM's addresses.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=128
	Addresses []clusterv1.MachineAddress `json:"addresses,omitempty"`

	// vmState is the state of the microVM on its host.
	// +optional
	VMState *VMState `json:"vmState,omitempty"`

	// ready is true once the microVM is running (Cluster API v1beta1
	// contract, for older tooling).
	// +optional
	Ready bool `json:"ready,omitempty"`

	// failureReason is a short, terminal failure reason (Cluster API v1beta1
	// contract, for older tooling).
	// +optional
	FailureReason *string `json:"failureReason,omitempty"`

	// failureMessage explains a terminal failure (Cluster API v1beta1
	// contract, for older tooling).
	// +optional
	FailureMessage *string `json:"failureMessage,omitempty"`
}

// MicrovmMachineInitializationStatus reports the provisioning of a
// MicrovmMachine.
// +kubebuilder:validation:MinProperties=1
type MicrovmMachineInitializationStatus struct {
	// provisioned is true once the microVM has been created on its host and
	// spec.providerID is set.
	// +optional
	Provisioned *bool `json:"provisioned,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:resource:path=microvmmachines,scope=Namespaced,categories=cluster-api,shortName=mvmm
// +kubebuilder:storageversion
// +kubebuilder:subresource:status
// +kubebuilder:metadata:labels="cluster.x-k8s.io/v1beta2=v1alpha1"
// +kubebuilder:printcolumn:name="Cluster",type="string",JSONPath=".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']",description="Cluster this MicrovmMachine belongs to"
// +kubebuilder:printcolumn:name="Machine",type="string",JSONPath=`.metadata.ownerReferences[?(@.kind=="Machine")].name`,description="Machine that owns this MicrovmMachine"
// +kubebuilder:printcolumn:name="ProviderID",type="string",JSONPath=".spec.providerID",description="microvm://<host>/<uid>"
// +kubebuilder:printcolumn:name="VMState",type="string",JSONPath=".status.vmState",description="State of the microVM"
// +kubebuilder:printcolumn:name="Provisioned",type="string",JSONPath=".status.initialization.provisioned",description="Machine infrastructure is provisioned"
// +kubebuilder:printcolumn:name="Ready",type="string",JSONPath=`.status.conditions[?(@.type=="Ready")].status`,description="Ready condition"
// +kubebuilder:printcolumn:name="Age",type="date",JSONPath=".metadata.creationTimestamp"

// MicrovmMachine is the infrastructure of a Cluster API Machine: one microVM
// on a flintlock host.
type MicrovmMachine struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired state.
	// +required
	Spec MicrovmMachineSpec `json:"spec"`

	// status is the observed state.
	// +optional
	Status MicrovmMachineStatus `json:"status,omitempty,omitzero"`
}

// GetConditions returns the machine's conditions (Cluster API conditions
// utilities).
func (m *MicrovmMachine) GetConditions() []metav1.Condition {
	return m.Status.Conditions
}

// SetConditions replaces the machine's conditions.
func (m *MicrovmMachine) SetConditions(conditions []metav1.Condition) {
	m.Status.Conditions = conditions
}

// +kubebuilder:object:root=true

// MicrovmMachineList is a list of MicrovmMachines.
type MicrovmMachineList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MicrovmMachine `json:"items"`
}

func init() {
	objectTypes = append(objectTypes, &MicrovmMachine{}, &MicrovmMachineList{})
}
