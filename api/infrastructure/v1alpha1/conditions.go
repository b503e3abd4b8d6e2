package v1alpha1

import clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

// Conditions and reasons shared by MicrovmCluster and MicrovmMachine. They
// are plain strings, like metav1.Condition's Type and Reason, and reuse
// Cluster API's values where one exists so that its tooling reads them.
const (
	// ReadyCondition summarises the other conditions of the object, including
	// its deletion. Cluster API mirrors it into the owner's
	// InfrastructureReady condition.
	ReadyCondition = clusterv1.ReadyCondition

	// PausedCondition is True while the object or its Cluster is paused.
	PausedCondition = clusterv1.PausedCondition

	// ReadyReason: every summarised condition is fine.
	ReadyReason = clusterv1.ReadyReason
	// NotReadyReason: at least one summarised condition is not fine.
	NotReadyReason = clusterv1.NotReadyReason
	// ReadyUnknownReason: at least one summarised condition is unknown.
	ReadyUnknownReason = clusterv1.ReadyUnknownReason
	// DeletingReason: the object is being deleted.
	DeletingReason = clusterv1.DeletingReason
	// InternalErrorReason: an unexpected error; see the controller's log.
	InternalErrorReason = clusterv1.InternalErrorReason
)

// MicrovmCluster conditions.
const (
	// ControlPlaneEndpointReachableCondition reports whether the workload
	// cluster's API server answers on the control-plane endpoint.
	ControlPlaneEndpointReachableCondition = "ControlPlaneEndpointReachable"

	// ControlPlaneEndpointReachableReason: the endpoint answered.
	ControlPlaneEndpointReachableReason = "Reachable"
	// ControlPlaneEndpointUnreachableReason: the endpoint did not answer,
	// which is expected until the first control-plane machine has booted.
	ControlPlaneEndpointUnreachableReason = "Unreachable"
	// WaitingForControlPlaneEndpointReason: neither the MicrovmCluster nor
	// the Cluster sets a control-plane endpoint yet.
	WaitingForControlPlaneEndpointReason = "WaitingForControlPlaneEndpoint"
)

// MicrovmMachine conditions.
const (
	// MicrovmReadyCondition reports the state of the machine's microVM on its
	// host. Terminal failures use MicrovmFailedReason or
	// InvalidConfigurationReason; the other False reasons are transient.
	MicrovmReadyCondition = "MicrovmReady"

	// WaitingForClusterInfrastructureReadyReason: the MicrovmCluster is not
	// provisioned yet.
	WaitingForClusterInfrastructureReadyReason = clusterv1.WaitingForClusterInfrastructureReadyReason
	// WaitingForBootstrapDataReason: the Machine has no bootstrap data yet.
	WaitingForBootstrapDataReason = clusterv1.WaitingForBootstrapDataReason
	// PlacementFailedReason: no host of the placement may take the machine
	// (for example no host allows control-plane machines).
	PlacementFailedReason = "PlacementFailed"
	// InvalidConfigurationReason (terminal): the spec cannot be turned into
	// a microVM, or the host rejected it as invalid.
	InvalidConfigurationReason = "InvalidConfiguration"
	// MicrovmCreateFailedReason: the create request to the host failed; it
	// is retried.
	MicrovmCreateFailedReason = "MicrovmCreateFailed"
	// MicrovmPendingReason: the host is creating or starting the microVM.
	MicrovmPendingReason = "MicrovmPending"
	// MicrovmRunningReason (True): the microVM is running.
	MicrovmRunningReason = "MicrovmRunning"
	// MicrovmFailedReason (terminal): the host reports the microVM failed.
	MicrovmFailedReason = "MicrovmFailed"
	// MicrovmDeletedReason: the microVM is being deleted or is gone from its
	// host.
	MicrovmDeletedReason = "MicrovmDeleted"
	// MicrovmUnknownStateReason: the host reports a state CAPMVM does not
	// know, or cannot be asked.
	MicrovmUnknownStateReason = "MicrovmUnknownState"
	// MicrovmDeletingReason: the machine is being deleted and the microVM
	// is being removed from its host.
	MicrovmDeletingReason = "MicrovmDeleting"
	// MicrovmAbandonedReason: the machine was deleted without confirming the
	// microVM's removal, because its host stayed unreachable past the grace
	// period.
	MicrovmAbandonedReason = "MicrovmAbandoned"

	// HostReachableCondition reports whether the flintlock host holding the
	// machine's microVM answers. Its LastTransitionTime to False starts the
	// grace period after which a deleted machine's host is given up on.
	HostReachableCondition = "HostReachable"

	// HostReachableReason: the host answered the last request.
	HostReachableReason = "Reachable"
	// HostUnreachableReason: the host did not answer the last request.
	HostUnreachableReason = "Unreachable"
)

// Values of the v1beta1-era status.failureReason, the same strings as Cluster
// API's former MachineStatusError and ClusterStatusError.
const (
	// FailureReasonInvalidConfiguration: the spec cannot work.
	FailureReasonInvalidConfiguration = "InvalidConfiguration"
	// FailureReasonCreateError: the microVM could not be created.
	FailureReasonCreateError = "CreateError"
	// FailureReasonUpdateError: the microVM failed after creation.
	FailureReasonUpdateError = "UpdateError"
	// FailureReasonDeleteError: the microVM could not be deleted.
	FailureReasonDeleteError = "DeleteError"
)
