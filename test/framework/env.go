// Package framework is the harness shared by the end-to-end suite
// (test/e2e) and the benchmark program (test/bench): it sets up the real
// environment flintlockd runs against — a private containerd, a registry on
// loopback holding the test guest images — and runs flintlockd as a
// separate process, with helpers to wait for VM states and to check that a
// deleted VM left nothing behind on the host.
//
// Functions return errors; those taking a testing.TB are for tests and
// fail them instead.
package framework

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
	"github.com/liquidmetal-go/liquidmetal/internal/testimages"
)

// ContainerdNamespace is the containerd namespace every daemon of the
// harness uses.
const ContainerdNamespace = "flintlock"

// Env is the environment daemons run against.
type Env struct {
	// Dir is the scratch folder holding containerd, the registry and, when
	// Setup built them, the binaries.
	Dir string
	// Flintlockd and FL are the binaries.
	Flintlockd string
	FL         string

	Containerd *testenv.Containerd
	Registry   *testenv.Registry
	// Images are the test kernel, initrd and root images in Registry.
	Images testimages.Images
}

// Options configure Setup.
type Options struct {
	// Dir is the scratch folder; keep it short (unix socket paths live in
	// it). Setup does not remove it.
	Dir string
	// Flintlockd and FL are prebuilt binaries; when either is empty Setup
	// builds both into Dir/bin.
	Flintlockd string
	FL         string
}

// Setup builds the binaries when needed, starts containerd and the
// registry and pushes the test images. ctx bounds the set-up only; Close
// ends what Setup started. On error nothing is left running.
func Setup(ctx context.Context, o Options) (_ *Env, err error) {
	if o.Dir == "" {
		return nil, errors.New("framework: Options.Dir is required")
	}
	e := &Env{Dir: o.Dir, Flintlockd: o.Flintlockd, FL: o.FL}
	defer func() {
		if err != nil {
			_ = e.Close()
		}
	}()
	if e.Flintlockd == "" || e.FL == "" {
		if e.Flintlockd, e.FL, err = BuildBinaries(ctx, filepath.Join(o.Dir, "bin")); err != nil {
			return nil, fmt.Errorf("building binaries: %w", err)
		}
	}
	if e.Containerd, err = testenv.StartContainerd(ctx, filepath.Join(o.Dir, "containerd")); err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	regBin, err := testenv.RegistryBinary(ctx)
	if err != nil {
		return nil, fmt.Errorf("registry binary: %w", err)
	}
	if e.Registry, err = testenv.StartRegistry(ctx, regBin, filepath.Join(o.Dir, "registry"), ""); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, fmt.Errorf("repo root: %w", err)
	}
	art, err := testimages.Build(ctx, filepath.Join(root, "bin", "cache", "guest"))
	if err != nil {
		return nil, fmt.Errorf("guest artifacts: %w", err)
	}
	if e.Images, err = testimages.Push(ctx, art, e.Registry.Host); err != nil {
		return nil, fmt.Errorf("pushing test images: %w", err)
	}
	return e, nil
}

// Close stops the registry and containerd (unmounting what containerd left
// mounted). It does not remove Dir.
func (e *Env) Close() error {
	var errs []error
	if e.Registry != nil {
		if err := e.Registry.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop registry: %w", err))
		}
		e.Registry = nil
	}
	if e.Containerd != nil {
		if err := e.Containerd.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop containerd: %w", err))
		}
		e.Containerd = nil
	}
	return errors.Join(errs...)
}

// BuildBinaries builds flintlockd and fl from the source tree into dir and
// returns their paths.
func BuildBinaries(ctx context.Context, dir string) (flintlockd, fl string, err error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	build := exec.CommandContext(ctx, "go", "build", "-o", dir+"/", "./cmd/flintlockd", "./cmd/fl")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("%v\n%s", err, out)
	}
	return filepath.Join(dir, "flintlockd"), filepath.Join(dir, "fl"), nil
}
