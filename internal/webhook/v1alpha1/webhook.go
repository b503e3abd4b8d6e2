// Package v1alpha1 owns the admission webhooks of the CAPMVM v1alpha1 API:
// validation of MicrovmCluster, MicrovmMachine, MicrovmMachineTemplate and
// MicrovmClusterTemplate (placement, host endpoints, sizes, immutability),
// and defaulting of MicrovmMachines (a stable, locally-administered guest
// MAC per network interface). The +kubebuilder:webhook markers here generate
// config/webhook/manifests.yaml (hack/generate-crds.sh).
package v1alpha1

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
)

// SetupWithManager registers every CAPMVM webhook with mgr's webhook
// server. mgr's scheme must hold the infrastructure v1alpha1 types.
func SetupWithManager(mgr ctrl.Manager) error {
	for _, setup := range []func(ctrl.Manager) error{
		SetupMicrovmClusterWebhookWithManager,
		SetupMicrovmClusterTemplateWebhookWithManager,
		SetupMicrovmMachineWebhookWithManager,
		SetupMicrovmMachineTemplateWebhookWithManager,
	} {
		if err := setup(mgr); err != nil {
			return err
		}
	}
	return nil
}

// templateSpecUpdate checks an update of a template of kind whose
// spec.template.spec (from oldSpec to newSpec) is immutable, but for the
// Cluster API topology controller's dry runs (the v1beta2 contract), and
// must stay valid. changed is false when the spec is the same; howTo ends
// the message of a forbidden change.
func templateSpecUpdate[S any](ctx context.Context, kind string, obj metav1.Object, oldSpec, newSpec *S,
	howTo string, validate func(*field.Path, *S) field.ErrorList) (changed bool, err error) {
	p := field.NewPath("spec", "template", "spec")
	fields, err := changedFields(oldSpec, newSpec)
	if err != nil {
		return false, invalid(kind, obj.GetName(), field.ErrorList{field.InternalError(p, err)})
	}
	if len(fields) == 0 {
		return false, nil
	}
	var errs field.ErrorList
	if !isTopologyDryRun(ctx, obj) {
		for _, f := range fields {
			errs = append(errs, field.Forbidden(p.Child(f), fmt.Sprintf(
				"a %s's spec.template.spec is immutable; to change %s, create a new template and %s", kind, f, howTo)))
		}
	}
	errs = append(errs, validate(p, newSpec)...)
	return true, invalid(kind, obj.GetName(), errs)
}

// invalid turns field errors into the API's Invalid status for obj's kind,
// or nil when there are none.
func invalid(kind, name string, errs field.ErrorList) error {
	if len(errs) == 0 {
		return nil
	}
	return apierrors.NewInvalid(infrav1.GroupVersion.WithKind(kind).GroupKind(), name, errs)
}

// cast checks that the webhook got the type it is registered for.
func cast[T runtime.Object](obj runtime.Object) (T, error) {
	o, ok := obj.(T)
	if !ok {
		var want T
		return want, apierrors.NewBadRequest(fmt.Sprintf("expected a %T, got a %T", want, obj))
	}
	return o, nil
}

// changedFields compares two structs field by field in their JSON form and
// returns the JSON names of the fields that differ, sorted. Zero and
// omitted values compare equal, as they are stored.
func changedFields(old, new any) ([]string, error) {
	o, err := jsonFields(old)
	if err != nil {
		return nil, err
	}
	n, err := jsonFields(new)
	if err != nil {
		return nil, err
	}
	var out []string
	for k, v := range n {
		if w, ok := o[k]; !ok || string(w) != string(v) {
			out = append(out, k)
		}
	}
	for k := range o {
		if _, ok := n[k]; !ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out, nil
}

// jsonFields is v's JSON object as raw field values. encoding/json writes
// map keys sorted, so equal values give equal bytes.
func jsonFields(v any) (map[string]json.RawMessage, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", v, err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decode %T: %w", v, err)
	}
	return m, nil
}
