package clusterctl_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// TestGeneratedClustersApply applies every flavor's generated cluster with
// `kubectl apply --dry-run=server` to a real API server (envtest) holding
// the Cluster API v1.12 CRDs and CAPMVM's, so that every object is checked
// against its CRD's schema (and the ConfigMaps against the API server's
// size limits) without controllers acting on it.
func TestGeneratedClustersApply(t *testing.T) {
	root := repoRoot(t)
	_, env := testenv.NewEnvtest(t, filepath.Join(root, "config", "crd", "bases"))
	kubeconfig := adminKubeconfig(t, env)

	for _, flavor := range []string{"cilium", "flannel", "", "topology"} {
		name := flavor
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			out, err := generate(t, flavor, merge(seed, map[string]string{"HOST_ENDPOINT": seedHosts[0]}))
			if err != nil {
				t.Fatal(err)
			}
			applyDryRun(t, kubeconfig, out, len(parseDocs(t, "clusterctl output", []byte(out))))
		})
	}

	// The seed then edits the MicrovmCluster to list both of its hosts.
	t.Run("seed hosts", func(t *testing.T) {
		out, err := generate(t, "cilium", merge(seed, map[string]string{"HOST_ENDPOINT": seedHosts[0]}))
		if err != nil {
			t.Fatal(err)
		}
		edited := addHost(t, out, seedHosts[1])
		c := parseCluster(t, edited)
		var got []string
		for _, h := range c.microvmCluster.Spec.Placement.StaticPool.Hosts {
			got = append(got, h.Endpoint)
		}
		if strings.Join(got, ",") != strings.Join(seedHosts, ",") {
			t.Fatalf("edited hosts %v, want %v", got, seedHosts)
		}
		applyDryRun(t, kubeconfig, edited, len(c.docs))
	})

	// The dry run does reject what the schemas forbid: a worker of 512 MB.
	t.Run("schema rejects", func(t *testing.T) {
		out, err := generate(t, "", merge(seed, map[string]string{"WORKER_MACHINE_MEMORY_MB": "512"}))
		if err != nil {
			t.Fatal(err)
		}
		stdout, stderr, err := kubectl(t, kubeconfig, out, "apply", "--dry-run=server", "-f", "-")
		if err == nil || !strings.Contains(stderr, "memoryMb") {
			t.Fatalf("apply of a 512 MB machine template: err %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
		}
	})
}

// applyDryRun applies manifests with a server-side dry run and expects
// every one of its n objects to be accepted.
func applyDryRun(t *testing.T, kubeconfig, manifests string, n int) {
	t.Helper()
	stdout, stderr, err := kubectl(t, kubeconfig, manifests, "apply", "--dry-run=server", "-f", "-")
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server: %v\n%s", err, stderr)
	}
	if got := strings.Count(stdout, "created (server dry run)"); got != n {
		t.Errorf("%d of %d objects accepted:\n%s\n%s", got, n, stdout, stderr)
	}
}

// kubectl runs the cached kubectl with stdin.
func kubectl(t *testing.T, kubeconfig, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(kubeDir(t), "kubectl"), append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// adminKubeconfig writes a kubeconfig of a system:masters user of env.
func adminKubeconfig(t *testing.T, env *envtest.Environment) string {
	t.Helper()
	user, err := env.ControlPlane.AddUser(envtest.User{Name: "clusterctl-test", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// addHost edits generated manifests the way the seed does by hand: one
// more host in the MicrovmCluster's static pool.
func addHost(t *testing.T, manifests, endpoint string) string {
	t.Helper()
	var out []string
	for _, d := range parseDocs(t, "clusterctl output", []byte(manifests)) {
		y, err := yaml.JSONToYAML(d.raw)
		if err != nil {
			t.Fatal(err)
		}
		if d.Kind == "MicrovmCluster" {
			var m map[string]any
			if err := yaml.Unmarshal(d.raw, &m); err != nil {
				t.Fatal(err)
			}
			pool := m["spec"].(map[string]any)["placement"].(map[string]any)["staticPool"].(map[string]any)
			pool["hosts"] = append(pool["hosts"].([]any), map[string]any{"endpoint": endpoint, "controlplaneAllowed": true})
			if y, err = yaml.Marshal(m); err != nil {
				t.Fatal(err)
			}
		}
		out = append(out, string(y))
	}
	return strings.Join(out, "---\n")
}
