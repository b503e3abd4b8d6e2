package v1alpha1

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
)

// SetupMicrovmMachineWebhookWithManager registers the MicrovmMachine
// defaulting and validating webhooks.
func SetupMicrovmMachineWebhookWithManager(mgr ctrl.Manager) error {
	return ctrl.NewWebhookManagedBy(mgr).
		For(&infrav1.MicrovmMachine{}).
		WithDefaulter(&MicrovmMachineCustomDefaulter{}).
		WithValidator(&MicrovmMachineCustomValidator{}).
		Complete()
}

// +kubebuilder:webhook:path=/mutate-infrastructure-cluster-x-k8s-io-v1alpha1-microvmmachine,mutating=true,failurePolicy=fail,sideEffects=None,groups=infrastructure.cluster.x-k8s.io,resources=microvmmachines,verbs=create;update,versions=v1alpha1,name=default.microvmmachine.infrastructure.cluster.x-k8s.io,admissionReviewVersions=v1

// MicrovmMachineCustomDefaulter gives every network interface without a
// guestMac a stable locally-administered address: DefaultGuestMAC of the
// machine's namespace, name and the interface's index.
type MicrovmMachineCustomDefaulter struct{}

var _ admission.CustomDefaulter = &MicrovmMachineCustomDefaulter{}

// Default implements admission.CustomDefaulter.
func (d *MicrovmMachineCustomDefaulter) Default(ctx context.Context, obj runtime.Object) error {
	m, err := cast[*infrav1.MicrovmMachine](obj)
	if err != nil {
		return err
	}
	seed := m.Name
	if seed == "" {
		// With generateName, the API server names the object only after
		// the mutating webhooks: the request's uid stands in for the name,
		// so the addresses are unique, and fixed once stored.
		req, err := admission.RequestFromContext(ctx)
		if err != nil {
			return apierrors.NewBadRequest(fmt.Sprintf("no admission request: %v", err))
		}
		seed = "generateName=" + m.GenerateName + ",request=" + string(req.UID)
	}
	if defaultGuestMACs(m.Namespace, seed, &m.Spec.MicrovmSpec) {
		logf.FromContext(ctx).V(1).Info("defaulted guest MACs", "namespace", m.Namespace, "name", m.Name, "generateName", m.GenerateName)
	}
	return nil
}

// +kubebuilder:webhook:path=/validate-infrastructure-cluster-x-k8s-io-v1alpha1-microvmmachine,mutating=false,failurePolicy=fail,sideEffects=None,groups=infrastructure.cluster.x-k8s.io,resources=microvmmachines,verbs=create;update,versions=v1alpha1,name=validation.microvmmachine.infrastructure.cluster.x-k8s.io,admissionReviewVersions=v1

// MicrovmMachineCustomValidator checks a MicrovmMachine on create and keeps
// its spec immutable afterwards, but for providerID, which the controller
// sets.
type MicrovmMachineCustomValidator struct{}

var _ admission.CustomValidator = &MicrovmMachineCustomValidator{}

// ValidateCreate implements admission.CustomValidator.
func (v *MicrovmMachineCustomValidator) ValidateCreate(_ context.Context, obj runtime.Object) (admission.Warnings, error) {
	m, err := cast[*infrav1.MicrovmMachine](obj)
	if err != nil {
		return nil, err
	}
	return nil, invalid("MicrovmMachine", m.Name, validateMachineSpec(field.NewPath("spec"), &m.Spec, false))
}

// ValidateUpdate implements admission.CustomValidator. Only the fields that
// may change are checked, so that an object stored before this webhook
// existed can still get its finalizer removed.
func (v *MicrovmMachineCustomValidator) ValidateUpdate(_ context.Context, oldObj, newObj runtime.Object) (admission.Warnings, error) {
	old, err := cast[*infrav1.MicrovmMachine](oldObj)
	if err != nil {
		return nil, err
	}
	m, err := cast[*infrav1.MicrovmMachine](newObj)
	if err != nil {
		return nil, err
	}
	spec := field.NewPath("spec")
	errs := immutableMachineSpec(spec, old, m)
	if id := m.Spec.ProviderID; id != "" && id != old.Spec.ProviderID {
		if msg := providerIDProblem(id); msg != "" {
			errs = append(errs, field.Invalid(spec.Child("providerID"), id, msg))
		}
	}
	return nil, invalid("MicrovmMachine", m.Name, errs)
}

// ValidateDelete implements admission.CustomValidator; deletion is always
// allowed.
func (v *MicrovmMachineCustomValidator) ValidateDelete(context.Context, runtime.Object) (admission.Warnings, error) {
	return nil, nil
}

// immutableMachineSpec forbids any spec change but providerID. The old
// spec is defaulted first, so that an object stored without guest MACs
// may be updated once the defaulter has filled them in.
func immutableMachineSpec(p *field.Path, old, m *infrav1.MicrovmMachine) field.ErrorList {
	o := old.Spec.DeepCopy()
	defaultGuestMACs(old.Namespace, old.Name, &o.MicrovmSpec)
	n := m.Spec.DeepCopy()
	o.ProviderID, n.ProviderID = "", ""
	changed, err := changedFields(o, n)
	if err != nil {
		return field.ErrorList{field.InternalError(p, err)}
	}
	var errs field.ErrorList
	for _, f := range changed {
		errs = append(errs, field.Forbidden(p.Child(f), fmt.Sprintf(
			"a MicrovmMachine's spec is immutable except providerID; to change %s, replace the machine (for example through its MachineDeployment's template)", f)))
	}
	return errs
}

// machineTemplateGuestMACWarnings warns about template interfaces with a
// fixed guestMac: every machine made from the template would share it.
func machineTemplateGuestMACWarnings(p *field.Path, s *infrav1.MicrovmSpec) admission.Warnings {
	var w admission.Warnings
	for i, n := range s.NetworkInterfaces {
		if n.GuestMAC != "" {
			w = append(w, fmt.Sprintf("%s: %s is given to every machine made from this template; leave it empty for a stable per-machine address",
				p.Child("networkInterfaces").Index(i).Child("guestMac"), n.GuestMAC))
		}
	}
	return w
}
