// Package clusterctl_test tests CAPMVM's clusterctl artifacts and the local
// management cluster with the real tools: the templates are regenerated
// from the CNI projects' sources and compared with the committed ones;
// hack/release-artifacts.sh writes a clusterctl local repository that
// clusterctl v1.12 generates clusters from; the generated clusters are
// applied (server-side dry run) to a real API server with the Cluster API
// and CAPMVM CRDs; hack/mgmt.sh brings up a management cluster whose
// managers and webhooks answer and tears it down.
package clusterctl_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// version is the CAPMVM release the tests write and generate from; its
// series must be in metadata.yaml.
const version = "v0.1.0"

// seed holds the seed's variables (its `export` lines) and its host.
var seed = map[string]string{
	"CLUSTER_NAME":                "mvm-test",
	"CONTROL_PLANE_MACHINE_COUNT": "1",
	"WORKER_MACHINE_COUNT":        "5",
	"CONTROL_PLANE_VIP":           "192.168.10.25",
	"EXP_CLUSTER_RESOURCE_SET":    "true",
}

// The seed's two flintlock hosts, as its MicrovmCluster lists them.
var seedHosts = []string{"147.75.80.43:9090", "147.75.80.45:9090"}

var (
	tmpRoot string // removed by TestMain

	releaseOnce sync.Once
	releaseDir  string
	releaseErr  error
)

func TestMain(m *testing.M) {
	var err error
	tmpRoot, err = os.MkdirTemp("", "capmvm-clusterctl-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(tmpRoot)
	os.Exit(code)
}

func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// capiDir returns the Cluster API cache (clusterctl, managers, CRDs).
func capiDir(t testing.TB) string {
	t.Helper()
	dir, err := testenv.CAPIAssets(context.Background())
	if err != nil {
		t.Fatalf("Cluster API %s: %v", testenv.CAPIVersion, err)
	}
	return dir
}

// kubeDir returns the Kubernetes cache (kubectl, kube-apiserver, etcd).
func kubeDir(t testing.TB) string {
	t.Helper()
	dir, err := testenv.KubeAssets(context.Background())
	if err != nil {
		t.Fatalf("Kubernetes %s: %v", testenv.KubeVersion, err)
	}
	return dir
}

// release returns the clusterctl local repository that
// `hack/release-artifacts.sh` writes (once per test binary).
func release(t testing.TB) string {
	t.Helper()
	releaseOnce.Do(func() {
		releaseDir = filepath.Join(tmpRoot, "release")
		cmd := exec.Command("bash", filepath.Join(repoRoot(t), "hack", "release-artifacts.sh"), releaseDir)
		cmd.Env = append(os.Environ(), "VERSION="+version)
		out, err := cmd.CombinedOutput()
		if err != nil {
			releaseErr = fmt.Errorf("hack/release-artifacts.sh: %w\n%s", err, out)
		}
	})
	if releaseErr != nil {
		t.Fatal(releaseErr)
	}
	return releaseDir
}

// clusterctl runs the real clusterctl v1.12 with a home folder of its own
// (no user configuration, no kubeconfig unless env names one) and env as
// its only template variables.
func clusterctl(t testing.TB, env map[string]string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(filepath.Join(capiDir(t), "clusterctl"), args...)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"XDG_CONFIG_HOME=" + filepath.Join(home, ".config"),
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// generate runs the seed's `clusterctl generate cluster` for a flavor ("" is
// the default template) against the release repository, offline.
func generate(t testing.TB, flavor string, env map[string]string) (string, error) {
	t.Helper()
	repo := release(t)
	args := []string{"generate", "cluster", env["CLUSTER_NAME"],
		"--config", filepath.Join(repo, "clusterctl.yaml"),
		"--infrastructure", "microvm:" + version,
		"--target-namespace", "default"}
	if flavor != "" {
		args = append(args, "--flavor", flavor)
	}
	out, stderr, err := clusterctl(t, env, args...)
	if err != nil {
		return "", fmt.Errorf("clusterctl %s: %w: %s", strings.Join(args, " "), err, stderr)
	}
	return out, nil
}

func merge(maps ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range maps {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}
