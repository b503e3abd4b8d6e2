package v1alpha1_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestGeneratedCodeIsFresh regenerates the deepcopy code and the CRDs with
// the pinned controller-gen into a temporary folder and fails when a
// committed file differs, is missing, or is no longer generated. It also
// checks that config/crd/kustomization.yaml lists exactly the generated CRDs.
func TestGeneratedCodeIsFresh(t *testing.T) {
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(root, "hack/generate-crds.sh"), out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("generate: %v\n%s", err, b)
	}

	compare := func(rel string) {
		want, err := os.ReadFile(filepath.Join(out, rel))
		if err != nil {
			t.Errorf("%s: not generated: %v", rel, err)
			return
		}
		got, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Errorf("%s: generated but not committed; run make generate", rel)
			return
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale; run make generate", rel)
		}
	}
	compare("api/infrastructure/v1alpha1/zz_generated.deepcopy.go")

	const bases = "config/crd/bases"
	generated := yamlFiles(t, filepath.Join(out, bases))
	committed := yamlFiles(t, filepath.Join(root, bases))
	if len(generated) != 4 {
		t.Errorf("generated CRDs = %v, want 4", generated)
	}
	for _, f := range generated {
		compare(filepath.Join(bases, f))
	}
	for _, f := range committed {
		if !slices.Contains(generated, f) {
			t.Errorf("%s/%s is committed but no longer generated", bases, f)
		}
	}

	var k struct {
		Resources []string `json:"resources"`
	}
	b, err := os.ReadFile(filepath.Join(root, "config/crd/kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, f := range generated {
		want = append(want, "bases/"+f)
	}
	slices.Sort(k.Resources)
	if !slices.Equal(k.Resources, want) {
		t.Errorf("config/crd/kustomization.yaml resources = %v, want %v", k.Resources, want)
	}
}

// yamlFiles lists the sorted .yaml file names of a folder.
func yamlFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range files {
		files[i] = filepath.Base(f)
	}
	slices.Sort(files)
	return files
}
