package v1alpha1

import (
	"context"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
)

// SetupMicrovmClusterTemplateWebhookWithManager registers the
// MicrovmClusterTemplate validating webhook.
func SetupMicrovmClusterTemplateWebhookWithManager(mgr ctrl.Manager) error {
	return ctrl.NewWebhookManagedBy(mgr).
		For(&infrav1.MicrovmClusterTemplate{}).
		WithValidator(&MicrovmClusterTemplateCustomValidator{}).
		Complete()
}

// +kubebuilder:webhook:path=/validate-infrastructure-cluster-x-k8s-io-v1alpha1-microvmclustertemplate,mutating=false,failurePolicy=fail,sideEffects=None,groups=infrastructure.cluster.x-k8s.io,resources=microvmclustertemplates,verbs=create;update,versions=v1alpha1,name=validation.microvmclustertemplate.infrastructure.cluster.x-k8s.io,admissionReviewVersions=v1

// MicrovmClusterTemplateCustomValidator checks the cluster spec of a
// ClusterClass template with the MicrovmCluster rules and keeps it
// immutable, but for the topology controller's dry runs.
type MicrovmClusterTemplateCustomValidator struct{}

var _ admission.CustomValidator = &MicrovmClusterTemplateCustomValidator{}

// ValidateCreate implements admission.CustomValidator.
func (v *MicrovmClusterTemplateCustomValidator) ValidateCreate(_ context.Context, obj runtime.Object) (admission.Warnings, error) {
	t, err := cast[*infrav1.MicrovmClusterTemplate](obj)
	if err != nil {
		return nil, err
	}
	p := field.NewPath("spec", "template", "spec")
	return nil, invalid("MicrovmClusterTemplate", t.Name, validateClusterSpec(p, &t.Spec.Template.Spec))
}

// ValidateUpdate implements admission.CustomValidator.
func (v *MicrovmClusterTemplateCustomValidator) ValidateUpdate(ctx context.Context, oldObj, newObj runtime.Object) (admission.Warnings, error) {
	old, err := cast[*infrav1.MicrovmClusterTemplate](oldObj)
	if err != nil {
		return nil, err
	}
	t, err := cast[*infrav1.MicrovmClusterTemplate](newObj)
	if err != nil {
		return nil, err
	}
	_, err = templateSpecUpdate(ctx, "MicrovmClusterTemplate", t, &old.Spec.Template.Spec, &t.Spec.Template.Spec,
		"reference it from the ClusterClass", validateClusterSpec)
	return nil, err
}

// ValidateDelete implements admission.CustomValidator; deletion is always
// allowed.
func (v *MicrovmClusterTemplateCustomValidator) ValidateDelete(context.Context, runtime.Object) (admission.Warnings, error) {
	return nil, nil
}
