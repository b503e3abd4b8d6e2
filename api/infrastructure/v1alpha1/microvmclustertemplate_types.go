package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
)

// MicrovmClusterTemplateSpec is the desired state of a MicrovmClusterTemplate.
type MicrovmClusterTemplateSpec struct {
	// template is the MicrovmCluster that a ClusterClass-based Cluster gets.
	// +required
	Template MicrovmClusterTemplateResource `json:"template"`
}

// MicrovmClusterTemplateResource is the metadata and spec of a MicrovmCluster
// made from a template.
type MicrovmClusterTemplateResource struct {
	// metadata is given to the MicrovmClusters made from the template.
	// +optional
	ObjectMeta clusterv1.ObjectMeta `json:"metadata,omitempty,omitzero"`

	// spec is the spec of the MicrovmClusters made from the template.
	// +required
	Spec MicrovmClusterSpec `json:"spec"`
}

// +kubebuilder:object:root=true
// +kubebuilder:resource:path=microvmclustertemplates,scope=Namespaced,categories=cluster-api,shortName=mvmct
// +kubebuilder:storageversion
// +kubebuilder:metadata:labels="cluster.x-k8s.io/v1beta2=v1alpha1"
// +kubebuilder:printcolumn:name="Age",type="date",JSONPath=".metadata.creationTimestamp"

// MicrovmClusterTemplate is the template of the MicrovmCluster of a
// ClusterClass.
type MicrovmClusterTemplate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired state.
	// +required
	Spec MicrovmClusterTemplateSpec `json:"spec"`
}

// +kubebuilder:object:root=true

// MicrovmClusterTemplateList is a list of MicrovmClusterTemplates.
type MicrovmClusterTemplateList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MicrovmClusterTemplate `json:"items"`
}

func init() {
	objectTypes = append(objectTypes, &MicrovmClusterTemplate{}, &MicrovmClusterTemplateList{})
}
