// Package v1alpha1 owns the CAPMVM API: the Cluster API infrastructure
// resources MicrovmCluster, MicrovmMachine, MicrovmMachineTemplate and
// MicrovmClusterTemplate of group infrastructure.cluster.x-k8s.io, with their
// condition types and reasons. The kubebuilder markers here are the source of
// the committed CRDs (config/crd/bases) and of zz_generated.deepcopy.go;
// regenerate both with `make generate`.
//
// The resources accept every field of existing CAPMVM manifests unchanged and
// implement the Cluster API v1beta2 infrastructure provider contract
// (status.initialization.provisioned, metav1.Condition conditions,
// list-shaped failure domains, machine addresses), while still filling the
// v1beta1-era status fields (ready, failureReason, failureMessage) for older
// tooling.
//
// +kubebuilder:object:generate=true
// +groupName=infrastructure.cluster.x-k8s.io
package v1alpha1
