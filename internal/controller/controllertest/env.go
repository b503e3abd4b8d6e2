// Package controllertest starts what CAPMVM's controller tests and
// benchmarks run against: a real kube-apiserver and etcd (envtest, with
// the cached builds of internal/testenv) carrying the Cluster API and
// CAPMVM CRDs. It is for tests only.
package controllertest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// StartAPIServer starts kube-apiserver and etcd with the Cluster API CRDs
// and CAPMVM's (config/crd/bases). stop ends them.
func StartAPIServer(ctx context.Context) (cfg *rest.Config, stop func() error, err error) {
	env := &envtest.Environment{
		ErrorIfCRDPathMissing:    true,
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
		CRDInstallOptions:        envtest.CRDInstallOptions{MaxTime: 60 * time.Second},
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		dir, err := testenv.KubeAssets(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("kube-apiserver and etcd %s: %w", testenv.KubeVersion, err)
		}
		env.BinaryAssetsDirectory = dir
	}
	capi, err := testenv.CAPIAssets(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("Cluster API %s CRDs: %w", testenv.CAPIVersion, err)
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, nil, err
	}
	env.CRDDirectoryPaths = append([]string{filepath.Join(root, "config", "crd", "bases")}, testenv.CAPICRDDirs(capi)...)
	cfg, err = env.Start()
	if err != nil {
		_ = env.Stop()
		return nil, nil, fmt.Errorf("start envtest: %w", err)
	}
	return cfg, env.Stop, nil
}
