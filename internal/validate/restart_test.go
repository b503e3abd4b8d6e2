package validate

import (
	"errors"
	"strings"
	"testing"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
)

func TestRestartPolicy(t *testing.T) {
	for _, tc := range []struct {
		policy     string
		max        int32
		field, msg string
	}{
		{"", 0, "", ""},
		{"never", 0, "", ""},
		{"on-failure", 0, "", ""},
		{"on-failure", 3, "", ""},
		{"always", 0, "", ""},
		{"sometimes", 0, "microvm.restart_policy", `"sometimes" is not one of never, on-failure, always`},
		{"On-Failure", 0, "microvm.restart_policy", "is not one of"},
		{"always", -1, "microvm.max_restarts", "-1 is not in 0..10000"},
		{"never", 2, "microvm.max_restarts", "restart_policy is never"},
		{"", 2, "microvm.max_restarts", "restart_policy is never"},
	} {
		spec := validSpec()
		spec.RestartPolicy, spec.MaxRestarts = tc.policy, tc.max
		err := CreateMicroVMRequest(&v1alpha1.CreateMicroVMRequest{Microvm: spec}, testProviders)
		if tc.field == "" {
			if err != nil {
				t.Errorf("%q/%d: want valid, got %v", tc.policy, tc.max, err)
			}
			continue
		}
		var verr *Error
		if !errors.As(err, &verr) || len(verr.Problems) != 1 || verr.Problems[0].Field != tc.field || !strings.Contains(verr.Problems[0].Detail, tc.msg) {
			t.Errorf("%q/%d: got %v, want %s: …%s…", tc.policy, tc.max, err, tc.field, tc.msg)
		}
	}
}
