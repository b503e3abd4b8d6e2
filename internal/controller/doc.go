// Package controller owns CAPMVM's Cluster API infrastructure controllers:
// the MicrovmCluster reconciler (provisioning once the control-plane
// endpoint is known, one failure domain per flintlock host, a check that
// the endpoint answers) and the MicrovmMachine reconciler (placement on a
// host, the microVM's creation through flintlockd's MicroVM API with its
// cloud-init data, its state in the machine's status and conditions, and
// its deletion). Both follow Cluster API's v1beta2 provider contract: a
// finalizer, owned conditions with a summary Ready condition written at
// the end of each reconcile, and pause handling. The MicrovmMachine
// reconciler writes its own optimistic-lock patches instead of using
// Cluster API's patch helper, to spend as few API writes per machine as
// it can (see MicrovmMachineReconciler).
//
// The +kubebuilder:rbac markers of the reconcilers are the source of
// config/rbac/role.yaml (hack/generate-crds.sh).
package controller
