package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
)

// ClusterFinalizer lets the cluster controller clean up before a
// MicrovmCluster is removed.
const ClusterFinalizer = "microvmcluster.infrastructure.cluster.x-k8s.io"

// MicrovmClusterSpec is the desired state of a MicrovmCluster.
type MicrovmClusterSpec struct {
	// controlPlaneEndpoint is the endpoint of the workload cluster's API
	// server (for example the kube-vip address). When empty, the Cluster's own
	// endpoint is used.
	// +optional
	ControlPlaneEndpoint clusterv1.APIEndpoint `json:"controlPlaneEndpoint,omitempty,omitzero"`

	// sshPublicKeys are authorized on every machine of the cluster unless the
	// machine sets its own.
	// +optional
	// +listType=atomic
	SSHPublicKeys []SSHPublicKey `json:"sshPublicKeys,omitempty"`

	// placement says on which flintlock hosts the machines' microVMs run.
	// +required
	Placement Placement `json:"placement"`

	// microvmProxy is an HTTP CONNECT proxy for the gRPC connections to the
	// hosts.
	// +optional
	MicrovmProxy *Proxy `json:"microvmProxy,omitempty"`

	// tlsSecretRef names a Secret in the cluster's namespace with tls.crt,
	// tls.key and ca.crt for mutual TLS to the hosts; plaintext when empty.
	// +optional
	TLSSecretRef string `json:"tlsSecretRef,omitempty"`
}

// Placement says where the machines' microVMs are created. Exactly one
// placement kind is set.
// +kubebuilder:validation:XValidation:rule="has(self.staticPool) != has(self.dynamicPool)",message="exactly one of staticPool or dynamicPool must be set"
type Placement struct {
	// staticPool places machines on a fixed list of hosts, spreading the
	// machines of one deployment across them deterministically.
	// +optional
	StaticPool *HostPool `json:"staticPool,omitempty"`

	// dynamicPool places machines on the host of a fixed list with the most
	// free capacity, as reported by each host's capacity service.
	// +optional
	DynamicPool *HostPool `json:"dynamicPool,omitempty"`
}

// HostPool is a set of flintlock hosts.
type HostPool struct {
	// hosts are the flintlock hosts of the pool; at least one.
	// +required
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +listType=map
	// +listMapKey=endpoint
	Hosts []Host `json:"hosts"`

	// basicAuthSecret names a Secret in the cluster's namespace whose keys are
	// host addresses without port and whose values are that host's token.
	// +optional
	BasicAuthSecret string `json:"basicAuthSecret,omitempty"`
}

// Host is a flintlock host.
type Host struct {
	// name is a friendly name of the host.
	// +optional
	Name string `json:"name,omitempty"`

	// endpoint is the host:port of the host's flintlockd gRPC API.
	// +required
	// +kubebuilder:validation:MinLength=1
	Endpoint string `json:"endpoint"`

	// controlplaneAllowed says whether control-plane machines may be placed
	// on this host.
	// +optional
	// +kubebuilder:default=true
	ControlplaneAllowed *bool `json:"controlplaneAllowed,omitempty"`
}

// AllowsControlPlane reports whether control-plane machines may be placed on
// the host; true when unset, like the CRD default.
func (h Host) AllowsControlPlane() bool {
	return h.ControlplaneAllowed == nil || *h.ControlplaneAllowed
}

// Proxy is an HTTP CONNECT proxy.
type Proxy struct {
	// endpoint is the proxy's address, host:port or an http(s) URL.
	// +required
	// +kubebuilder:validation:MinLength=1
	Endpoint string `json:"endpoint"`
}

// MicrovmClusterStatus is the observed state of a MicrovmCluster.
type MicrovmClusterStatus struct {
	// initialization reports the provisioning of the cluster infrastructure
	// (Cluster API v1beta2 contract).
	// +optional
	Initialization MicrovmClusterInitializationStatus `json:"initialization,omitempty,omitzero"`

	// conditions are the observations of the cluster's state; see the
	// MicrovmCluster condition constants.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=32
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// failureDomains has one entry per host endpoint; controlPlane tells
	// whether control-plane machines may be placed there.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=256
	FailureDomains []clusterv1.FailureDomain `json:"failureDomains,omitempty"`

	// ready is true once the cluster infrastructure is provisioned (Cluster
	// API v1beta1 contract, for older tooling).
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

// MicrovmClusterInitializationStatus reports the provisioning of a
// MicrovmCluster.
// +kubebuilder:validation:MinProperties=1
type MicrovmClusterInitializationStatus struct {
	// provisioned is true once the cluster infrastructure is ready for
	// machines: the control-plane endpoint is known.
	// +optional
	Provisioned *bool `json:"provisioned,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:resource:path=microvmclusters,scope=Namespaced,categories=cluster-api,shortName=mvmc
// +kubebuilder:storageversion
// +kubebuilder:subresource:status
// +kubebuilder:metadata:labels="cluster.x-k8s.io/v1beta2=v1alpha1"
// +kubebuilder:printcolumn:name="Cluster",type="string",JSONPath=".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']",description="Cluster this MicrovmCluster belongs to"
// +kubebuilder:printcolumn:name="Provisioned",type="string",JSONPath=".status.initialization.provisioned",description="Cluster infrastructure is provisioned"
// +kubebuilder:printcolumn:name="Ready",type="string",JSONPath=`.status.conditions[?(@.type=="Ready")].status`,description="Ready condition"
// +kubebuilder:printcolumn:name="Endpoint",type="string",JSONPath=".spec.controlPlaneEndpoint.host",description="Control-plane endpoint host",priority=1
// +kubebuilder:printcolumn:name="Age",type="date",JSONPath=".metadata.creationTimestamp"

// MicrovmCluster is the infrastructure of a Cluster API cluster whose machines
// are microVMs on flintlock hosts.
type MicrovmCluster struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired state.
	// +required
	Spec MicrovmClusterSpec `json:"spec"`

	// status is the observed state.
	// +optional
	Status MicrovmClusterStatus `json:"status,omitempty,omitzero"`
}

// GetConditions returns the cluster's conditions (Cluster API conditions
// utilities).
func (c *MicrovmCluster) GetConditions() []metav1.Condition {
	return c.Status.Conditions
}

// SetConditions replaces the cluster's conditions.
func (c *MicrovmCluster) SetConditions(conditions []metav1.Condition) {
	c.Status.Conditions = conditions
}

// +kubebuilder:object:root=true

// MicrovmClusterList is a list of MicrovmClusters.
type MicrovmClusterList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MicrovmCluster `json:"items"`
}

func init() {
	objectTypes = append(objectTypes, &MicrovmCluster{}, &MicrovmClusterList{})
}
