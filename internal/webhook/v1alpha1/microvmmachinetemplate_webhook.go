package v1alpha1

import (
	"context"
	"fmt"

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
	p := field.NewPath("spec", "template", "spec")
	changed, err := changedFields(&old.Spec.Template.Spec, &t.Spec.Template.Spec)
	if err != nil {
		return nil, invalid("MicrovmMachineTemplate", t.Name, field.ErrorList{field.InternalError(p, err)})
	}
	if len(changed) == 0 {
		return nil, nil
	}
	var errs field.ErrorList
	if !isTopologyDryRun(ctx, t) {
		for _, f := range changed {
			errs = append(errs, field.Forbidden(p.Child(f), fmt.Sprintf(
				"a MicrovmMachineTemplate's spec.template.spec is immutable; to change %s, create a new template and reference it", f)))
		}
	}
	errs = append(errs, validateMachineSpec(p, &t.Spec.Template.Spec, true)...)
	return machineTemplateGuestMACWarnings(p, &t.Spec.Template.Spec.MicrovmSpec), invalid("MicrovmMachineTemplate", t.Name, errs)
}

// ValidateDelete implements admission.CustomValidator; deletion is always
// allowed.
func (v *MicrovmMachineTemplateCustomValidator) ValidateDelete(context.Context, runtime.Object) (admission.Warnings, error) {
	return nil, nil
}
