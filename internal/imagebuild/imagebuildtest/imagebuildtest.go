// Package imagebuildtest gives tests the kernel and node OS images of
// internal/imagebuild, built in the repository's shared cache
// (bin/cache/images) from the kubelet, kubeadm and kubectl that
// hack/build-kube-node.sh builds (bin/cache/kube-node-<version>). Cold, the
// node image takes minutes (debootstrap and the Kubernetes build); warm,
// seconds.
package imagebuildtest

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/liquidmetal-go/liquidmetal/internal/imagebuild"
	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// CacheDir is the repository's image build cache.
func CacheDir() (string, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "bin", "cache", "images"), nil
}

// KubeBinDir returns the folder of the cached kubelet, kubeadm and kubectl
// build, building them first when missing (about 7 minutes).
func KubeBinDir(ctx context.Context) (string, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(root, "hack", "build-kube-node.sh"), "-p")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return "", fmt.Errorf("hack/build-kube-node.sh: %w: %s", err, ee.Stderr)
		}
		return "", fmt.Errorf("hack/build-kube-node.sh: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Images builds (or finds cached) the kernel image of the Debian kernel
// package and the node OS image carrying its modules.
func Images(ctx context.Context, kernelPackage string) (*imagebuild.Kernel, *imagebuild.Node, error) {
	cache, err := CacheDir()
	if err != nil {
		return nil, nil, err
	}
	k, err := imagebuild.BuildKernel(ctx, imagebuild.KernelOptions{Package: kernelPackage, CacheDir: cache})
	if err != nil {
		return nil, nil, err
	}
	kube, err := KubeBinDir(ctx)
	if err != nil {
		return nil, nil, err
	}
	n, err := imagebuild.BuildNode(ctx, imagebuild.NodeOptions{CacheDir: cache, KubeBinDir: kube, Kernel: k})
	if err != nil {
		return nil, nil, err
	}
	return k, n, nil
}
