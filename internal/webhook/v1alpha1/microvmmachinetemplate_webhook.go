package v1alpha1

import (
	"context"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
)

// SetupMicrovmMachineTemplateWebhookWithManager registers the
// MicrovmMachineTemplate validating webhook.
func SetupMicrovmMachineTemplateWebhookWithManager(mgr ctrl.Manager) error {
	return ctrl.NewWebhookManagedBy(mgr).
		For(&infrav1.MicrovmMachineTemplate{}).
		WithValidator(&MicrovmMachineTemplateCustomValidator{}).
		Complete()
}

// +kubebuilder:webhook:path=/validate-infrastructure-cluster-x-k8s-io-v1alpha1-microvmmachinetemplate,mutating=false,failurePolicy=fail,sideEffects=None,groups=infrastructure.cluster.x-k8s.io,resources=microvmmachinetemplates,verbs=create;update,versions=v1alpha1,name=validation.microvmmachinetemplate.infrastructure.cluster.x-k8s.io,admissionReviewVersions=v1

// MicrovmMachineTemplateCustomValidator checks the machine spec of a
// template and keeps it immutable: machines are rolled out by pointing
// their owner at a new template. The Cluster API topology controller's
// dry runs are let through, as the v1beta2 contract requires.
type MicrovmMachineTemplateCustomValidator struct{}

var _ admission.CustomValidator = &MicrovmMachineTemplateCustomValidator{}

// ValidateCreate implements admission.CustomValidator. A fixed guestMac is
// allowed with a warning.
func (v *MicrovmMachineTemplateCustomValidator) ValidateCreate(_ context.Context, obj runtime.Object) (admission.Warnings, error) {
	t, err := cast[*infrav1.MicrovmMachineTemplate](obj)
	if err != nil {
		return nil, err
	}
	p := field.NewPath("spec", "template", "spec")
	return machineTemplateGuestMACWarnings(p, &t.Spec.Template.Spec.MicrovmSpec),
		invalid("MicrovmMachineTemplate", t.Name, validateMachineSpec(p, &t.Spec.Template.Spec, true))
}

// ValidateUpdate implements admission.CustomValidator.
func (v *MicrovmMachineTemplateCustomValidator) ValidateUpdate(ctx context.Context, oldObj, newObj runtime.Object) (admission.Warnings, error) {
	old, err := cast[*infrav1.MicrovmMachineTemplate](oldObj)
	if err != nil {
		return nil, err
	}
	t, err := cast[*infrav1.MicrovmMachineTemplate](newObj)
	if err != nil {
		return nil, err
	}
	changed, err := templateSpecUpdate(ctx, "MicrovmMachineTemplate", t, &old.Spec.Template.Spec, &t.Spec.Template.Spec,
		"reference it", func(p *field.Path, s *infrav1.MicrovmMachineSpec) field.ErrorList {
			return validateMachineSpec(p, s, true)
		})
	if !changed {
		return nil, err
	}
	return machineTemplateGuestMACWarnings(field.NewPath("spec", "template", "spec"), &t.Spec.Template.Spec.MicrovmSpec), err
}

// ValidateDelete implements admission.CustomValidator; deletion is always
// allowed.
func (v *MicrovmMachineTemplateCustomValidator) ValidateDelete(context.Context, runtime.Object) (admission.Warnings, error) {
	return nil, nil
}
