package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Versions of the Kubernetes and Cluster API builds that envtest and the
// local management cluster run. hack/build-kube.sh and hack/build-capi.sh
// build them from the Go module proxy into bin/cache/kube-<KubeVersion> and
// bin/cache/capi-<CAPIVersion>.
const (
	KubeVersion = "v1.34.4"
	EtcdVersion = "v3.6.16"
	CAPIVersion = "v1.12.0"
)

// kubeBinaries are the files of a kube assets folder; envtest needs the
// first three, the management cluster all of them.
var kubeBinaries = []string{"kube-apiserver", "etcd", "kubectl", "kube-controller-manager"}

// capiBinaries are the executables of a Cluster API cache folder.
var capiBinaries = []string{"capi-manager", "kubeadm-bootstrap-manager", "kubeadm-control-plane-manager", "clusterctl"}

// CAPIProviders name the Cluster API providers whose manifests the CAPI
// cache holds, as crds/<provider>/, components/<provider>.yaml and
// webhooks/<provider>.yaml.
var CAPIProviders = []string{"core", "bootstrap-kubeadm", "control-plane-kubeadm"}

// KubeAssets returns the folder holding kube-apiserver, etcd, kubectl and
// kube-controller-manager (the layout KUBEBUILDER_ASSETS expects), building
// them with hack/build-kube.sh when they are not cached yet (about 10 min,
// once per version).
func KubeAssets(ctx context.Context) (string, error) {
	return cachedBuild(ctx, "kube-"+KubeVersion, kubeBinaries, nil, "build-kube.sh",
		"KUBE_VERSION="+KubeVersion, "ETCD_VERSION="+EtcdVersion)
}

// CAPIAssets returns the Cluster API cache folder: the core, kubeadm
// bootstrap and kubeadm control-plane managers, clusterctl, and the
// providers' manifests (see CAPIProviders). It builds them with
// hack/build-capi.sh when they are not cached yet (a few minutes, once).
func CAPIAssets(ctx context.Context) (string, error) {
	return cachedBuild(ctx, "capi-"+CAPIVersion, capiBinaries, []string{".manifests-done"}, "build-capi.sh",
		"CAPI_VERSION="+CAPIVersion)
}

// CAPICRDDirs returns the CRD folders of every Cluster API provider in a
// CAPIAssets folder.
func CAPICRDDirs(capiDir string) []string {
	dirs := make([]string, 0, len(CAPIProviders))
	for _, p := range CAPIProviders {
		dirs = append(dirs, filepath.Join(capiDir, "crds", p))
	}
	return dirs
}

// cachedBuild returns bin/cache/<name> when every executable and marker
// file is there, and otherwise runs hack/<script> (which takes a lock, so
// concurrent test packages wait for one build) and checks again.
func cachedBuild(ctx context.Context, name string, executables, markers []string, script string, env ...string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, "bin", "cache", name)
	complete := func() error {
		for _, b := range executables {
			fi, err := os.Stat(filepath.Join(dir, b))
			if err != nil {
				return err
			}
			if !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
				return fmt.Errorf("%s is not an executable file", fi.Name())
			}
		}
		for _, m := range markers {
			if _, err := os.Stat(filepath.Join(dir, m)); err != nil {
				return err
			}
		}
		return nil
	}
	if complete() == nil {
		return dir, nil
	}
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "hack", script))
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("hack/%s: %w: %s", script, err, bytes.TrimSpace(out))
	}
	if err := complete(); err != nil {
		return "", fmt.Errorf("hack/%s left an incomplete %s: %w", script, name, err)
	}
	return dir, nil
}

// NewEnvtest starts a real kube-apiserver and etcd (controller-runtime's
// envtest with the cached binaries of KubeAssets) for a test, with the CRDs
// found in crdDirs and the Cluster API CRDs (Cluster, Machine,
// KubeadmControlPlane, ...) installed, and stops them when the test ends.
// It returns the admin rest.Config and the running environment.
// The test is skipped, saying why, when the binaries cannot be built.
func NewEnvtest(t testing.TB, crdDirs ...string) (*rest.Config, *envtest.Environment) {
	t.Helper()
	env := &envtest.Environment{
		CRDDirectoryPaths:     crdDirs,
		ErrorIfCRDPathMissing: true,
	}
	return StartEnvtest(t, env), env
}

// StartEnvtest starts env (for tests that need more of envtest, such as
// WebhookInstallOptions) after filling in what NewEnvtest does: the cached
// binaries as BinaryAssetsDirectory unless the environment or
// KUBEBUILDER_ASSETS names others, the Cluster API CRDs, and start and wait
// timeouts that allow for a loaded machine. It stops env when the test ends.
func StartEnvtest(t testing.TB, env *envtest.Environment) *rest.Config {
	t.Helper()
	ctx := context.Background()
	if env.BinaryAssetsDirectory == "" && os.Getenv("KUBEBUILDER_ASSETS") == "" {
		dir, err := KubeAssets(ctx)
		if err != nil {
			t.Skipf("SKIP: envtest needs kube-apiserver and etcd %s, which could not be built: %v", KubeVersion, err)
		}
		env.BinaryAssetsDirectory = dir
	}
	capi, err := CAPIAssets(ctx)
	if err != nil {
		t.Skipf("SKIP: envtest needs the Cluster API %s CRDs, which could not be built: %v", CAPIVersion, err)
	}
	env.CRDDirectoryPaths = append(env.CRDDirectoryPaths, CAPICRDDirs(capi)...)
	// envtest's 20 s and 10 s defaults are tight when other test packages
	// share the two CPUs; the environment variables still win.
	if env.ControlPlaneStartTimeout == 0 && os.Getenv("KUBEBUILDER_CONTROLPLANE_START_TIMEOUT") == "" {
		env.ControlPlaneStartTimeout = 90 * time.Second
	}
	if env.ControlPlaneStopTimeout == 0 && os.Getenv("KUBEBUILDER_CONTROLPLANE_STOP_TIMEOUT") == "" {
		env.ControlPlaneStopTimeout = 30 * time.Second
	}
	if env.CRDInstallOptions.MaxTime == 0 {
		env.CRDInstallOptions.MaxTime = 60 * time.Second
	}
	cfg, err := env.Start()
	if err != nil {
		// Start may have left etcd or the apiserver running.
		_ = env.Stop()
		t.Fatalf("start envtest: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop envtest: %v", err)
		}
	})
	return cfg
}
