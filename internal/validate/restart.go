package validate

import (
	"slices"
	"strings"

	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// RestartPolicies are the values of MicroVMSpec.restart_policy (empty is
// never).
var RestartPolicies = []string{"never", "on-failure", "always"}

// MaxRestarts bounds MicroVMSpec.max_restarts.
const MaxRestarts = 10000

func checkRestart(ps *problems, p string, spec *types.MicroVMSpec) {
	policy := spec.GetRestartPolicy()
	if policy != "" && !slices.Contains(RestartPolicies, policy) {
		ps.add(p+".restart_policy", "%q is not one of %s", policy, strings.Join(RestartPolicies, ", "))
	}
	switch n := spec.GetMaxRestarts(); {
	case n < 0 || n > MaxRestarts:
		ps.add(p+".max_restarts", "%d is not in 0..%d", n, MaxRestarts)
	case n > 0 && (policy == "" || policy == "never"):
		ps.add(p+".max_restarts", "set, but restart_policy is never")
	}
}
