package controller_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// TestRBACIsFresh regenerates config/rbac/role.yaml from the controllers'
// +kubebuilder:rbac markers and compares it with the committed file.
func TestRBACIsFresh(t *testing.T) {
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(root, "hack/generate-crds.sh"), out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("generate: %v\n%s", err, b)
	}
	want, err := os.ReadFile(filepath.Join(out, "config/rbac/role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(root, "config/rbac/role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("config/rbac/role.yaml is stale; run make generate")
	}
	var role rbacv1.ClusterRole
	if err := yaml.Unmarshal(got, &role); err != nil {
		t.Fatal(err)
	}
	// The controllers write their objects' status and finalizers and read
	// the bootstrap data and host credentials.
	need := map[string]bool{"microvmmachines/status": false, "microvmclusters/finalizers": false, "secrets": false, "machines": false}
	for _, r := range role.Rules {
		for _, res := range r.Resources {
			if _, ok := need[res]; ok {
				need[res] = true
			}
		}
	}
	for res, ok := range need {
		if !ok {
			t.Errorf("role.yaml grants nothing on %s", res)
		}
	}
}
