package v1alpha1

import (
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/cluster-api/util/topology"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
)

// SetupMicrovmClusterWebhookWithManager registers the MicrovmCluster
// validating webhook.
func SetupMicrovmClusterWebhookWithManager(mgr ctrl.Manager) error {
	return ctrl.NewWebhookManagedBy(mgr).
		For(&infrav1.MicrovmCluster{}).
		WithValidator(&MicrovmClusterCustomValidator{}).
		Complete()
}

// +kubebuilder:webhook:path=/validate-infrastructure-cluster-x-k8s-io-v1alpha1-microvmcluster,mutating=false,failurePolicy=fail,sideEffects=None,groups=infrastructure.cluster.x-k8s.io,resources=microvmclusters,verbs=create;update,versions=v1alpha1,name=validation.microvmcluster.infrastructure.cluster.x-k8s.io,admissionReviewVersions=v1

// MicrovmClusterCustomValidator checks a MicrovmCluster's placement, host
// endpoints and control-plane endpoint. The spec stays mutable (hosts may
// be added, and ClusterClass updates the cluster in place), except the
// control-plane endpoint once it is set.
type MicrovmClusterCustomValidator struct{}

var _ admission.CustomValidator = &MicrovmClusterCustomValidator{}

// ValidateCreate implements admission.CustomValidator.
func (v *MicrovmClusterCustomValidator) ValidateCreate(_ context.Context, obj runtime.Object) (admission.Warnings, error) {
	c, err := cast[*infrav1.MicrovmCluster](obj)
	if err != nil {
		return nil, err
	}
	return nil, invalid("MicrovmCluster", c.Name, validateClusterSpec(field.NewPath("spec"), &c.Spec))
}

// ValidateUpdate implements admission.CustomValidator. An update that
// leaves the spec alone (metadata, finalizers) is always allowed.
func (v *MicrovmClusterCustomValidator) ValidateUpdate(ctx context.Context, oldObj, newObj runtime.Object) (admission.Warnings, error) {
	old, err := cast[*infrav1.MicrovmCluster](oldObj)
	if err != nil {
		return nil, err
	}
	c, err := cast[*infrav1.MicrovmCluster](newObj)
	if err != nil {
		return nil, err
	}
	spec := field.NewPath("spec")
	changed, err := changedFields(&old.Spec, &c.Spec)
	if err != nil {
		return nil, invalid("MicrovmCluster", c.Name, field.ErrorList{field.InternalError(spec, err)})
	}
	if len(changed) == 0 {
		return nil, nil
	}
	errs := validateClusterSpec(spec, &c.Spec)
	if oe := old.Spec.ControlPlaneEndpoint; !oe.IsZero() && oe != c.Spec.ControlPlaneEndpoint && !isTopologyDryRun(ctx, c) {
		errs = append(errs, field.Forbidden(spec.Child("controlPlaneEndpoint"),
			"immutable once set: the workload cluster's certificates and kubeconfig name "+oe.String()))
	}
	return nil, invalid("MicrovmCluster", c.Name, errs)
}

// ValidateDelete implements admission.CustomValidator; deletion is always
// allowed.
func (v *MicrovmClusterCustomValidator) ValidateDelete(context.Context, runtime.Object) (admission.Warnings, error) {
	return nil, nil
}

// isTopologyDryRun reports whether the request is the Cluster API
// topology controller's dry run, which immutability checks must let
// through.
func isTopologyDryRun(ctx context.Context, obj metav1.Object) bool {
	req, err := admission.RequestFromContext(ctx)
	if err != nil {
		return false
	}
	return topology.IsDryRunRequest(req, obj)
}
