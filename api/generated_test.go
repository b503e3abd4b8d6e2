package api_test

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGeneratedCodeIsFresh regenerates the API code into a temporary folder
// and fails when any committed generated file differs or is missing.
func TestGeneratedCodeIsFresh(t *testing.T) {
	if _, err := exec.LookPath("protoc"); err != nil {
		t.Skip("SKIPPED: protoc is not installed (run hack/install-deps.sh)")
	}
	out := t.TempDir()
	cmd := exec.Command("bash", "../hack/generate-proto.sh", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("generate: %v\n%s", err, b)
	}
	n := 0
	err := filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(out, p)
		want, _ := os.ReadFile(p)
		got, err := os.ReadFile(rel)
		if err != nil {
			t.Errorf("%s: generated but not committed; run make generate", rel)
			return nil
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale; run make generate", rel)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 7 {
		t.Fatalf("only %d generated files compared", n)
	}
	// Each service's generated files must be among those compared.
	for _, f := range []string{
		"services/microvm/v1alpha1/microvms_grpc.pb.go",
		"services/host/v1alpha1/host.pb.go",
		"services/host/v1alpha1/host_grpc.pb.go",
		"services/host/v1alpha1/host.pb.gw.go",
		"services/power/v1alpha1/power.pb.go",
		"services/power/v1alpha1/power_grpc.pb.go",
		"services/power/v1alpha1/power.pb.gw.go",
	} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("%s was not generated: %v", f, err)
		}
	}
	// Every committed generated file must still be produced.
	_ = filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(p, ".pb.go") || strings.HasSuffix(p, ".pb.gw.go")) {
			if _, err := os.Stat(filepath.Join(out, p)); err != nil {
				t.Errorf("%s is committed but no longer generated", p)
			}
		}
		return nil
	})
}
