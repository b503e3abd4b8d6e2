package flcli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"github.com/liquidmetal-go/liquidmetal/internal/imagebuild"
)

// imageFlags are the flags both image builds share.
type imageFlags struct {
	cache     string
	push      string
	plainHTTP bool
}

func (f *imageFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.cache, "cache", defaultImageCache(), "folder caching downloaded packages and built layers")
	cmd.Flags().StringVar(&f.push, "push", "", "push the image to this reference (registry/repository:tag); credentials come from docker's config.json ($DOCKER_CONFIG)")
	cmd.Flags().BoolVar(&f.plainHTTP, "plain-http", false, "talk plain HTTP to the registry (loopback registries always get it)")
}

// defaultImageCache is $XDG_CACHE_HOME/liquidmetal/images (~/.cache/...).
func defaultImageCache() string {
	d, err := os.UserCacheDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "liquidmetal-images")
	}
	return filepath.Join(d, "liquidmetal", "images")
}

// imageCommand is `fl image`: building the images microVMs boot. It talks
// to no flintlockd.
func imageCommand(g *globals) *cobra.Command {
	img := &cobra.Command{
		Use:   "image",
		Short: "Build the kernel and node OS images microVMs boot",
	}
	build := &cobra.Command{
		Use:   "build",
		Short: "Build an image from Debian packages (no container engine) and optionally push it",
		Long: `Build an image from Debian packages, without a container engine, and
optionally push it to a registry. The layout of the images is described in
docs/images.md. Builds are cached: an unchanged rebuild gives the same digest.`,
	}
	build.AddCommand(buildKernelCommand(g), buildNodeCommand(g))
	img.AddCommand(build)
	return img
}

func buildKernelCommand(g *globals) *cobra.Command {
	var (
		f   imageFlags
		pkg string
	)
	cmd := &cobra.Command{
		Use:   "kernel [flags]",
		Short: "Build the kernel image (boot/vmlinuz, boot/vmlinux, modules layer) of a Debian kernel package",
		Example: `  fl image build kernel --push $REGISTRY/liquidmetal/kernel:6.1
  fl image build kernel --package linux-image-amd64 --push $REGISTRY/liquidmetal/kernel:generic`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.withTimeout(cmd.Context(), 0)
			defer cancel()
			defer setImageLogger(cmd.ErrOrStderr())()
			k, err := imagebuild.BuildKernel(ctx, imagebuild.KernelOptions{Package: pkg, CacheDir: f.cache})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "kernel\t%s (%s %s)\n", k.Release, k.Package, k.PackageVersion)
			img, err := k.Image()
			if err != nil {
				return err
			}
			return f.finish(ctx, out, img)
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&pkg, "package", imagebuild.DefaultKernelPackage, "Debian kernel package, versioned or a metapackage")
	return cmd
}

func buildNodeCommand(g *globals) *cobra.Command {
	var (
		f       imageFlags
		o       imagebuild.NodeOptions
		kernPkg string
	)
	cmd := &cobra.Command{
		Use:   "node [flags]",
		Short: "Build the node OS image: Debian with systemd, cloud-init, containerd and kubelet/kubeadm/kubectl",
		Long: `Build the node OS image: a Debian root filesystem made with debootstrap
(systemd, cloud-init for NoCloud, containerd, runc), kubelet, kubeadm and
kubectl from --kube-bin with their systemd units, the kernel settings
Kubernetes needs, and the modules of the kernel --kernel-package names (boot
the image with the kernel image of the same package). Needs root.`,
		Example: `  hack/build-kube-node.sh   # kubelet, kubeadm, kubectl into bin/cache/kube-node-<version>
  fl image build node --kube-bin bin/cache/kube-node-v1.34.4 \
    --push $REGISTRY/liquidmetal/node:v1.34.4`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.withTimeout(cmd.Context(), 0)
			defer cancel()
			defer setImageLogger(cmd.ErrOrStderr())()
			k, err := imagebuild.BuildKernel(ctx, imagebuild.KernelOptions{Package: kernPkg, CacheDir: f.cache})
			if err != nil {
				return err
			}
			o.CacheDir, o.Kernel = f.cache, k
			n, err := imagebuild.BuildNode(ctx, o)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "kubernetes\t%s\nkernel\t%s (%s %s)\ndebian\t%s (%s)\n",
				n.KubernetesVersion, k.Release, k.Package, k.PackageVersion, n.Suite, n.Mirror)
			img, err := n.Image()
			if err != nil {
				return err
			}
			return f.finish(ctx, out, img)
		},
	}
	f.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&o.KubeBinDir, "kube-bin", "", "folder holding kubelet, kubeadm and kubectl of one version (required)")
	fl.StringVar(&kernPkg, "kernel-package", imagebuild.DefaultKernelPackage, "Debian kernel package whose modules the image carries")
	fl.StringVar(&o.Suite, "suite", imagebuild.DefaultSuite, "Debian release")
	fl.StringVar(&o.Mirror, "mirror", "", "Debian mirror (default: the one apt uses for the suite)")
	fl.StringSliceVar(&o.ExtraPackages, "package", nil, "extra Debian packages to install (repeat or comma-separate)")
	fl.BoolVar(&o.Refresh, "refresh", false, "run debootstrap again even when its result is cached (newer packages)")
	_ = cmd.MarkFlagRequired("kube-bin")
	return cmd
}

// finish prints the image digest and pushes it when asked.
func (f *imageFlags) finish(ctx context.Context, out io.Writer, img v1.Image) error {
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "digest\t%s\n", d)
	if f.push == "" {
		return nil
	}
	ref, err := imagebuild.Push(ctx, img, f.push, imagebuild.PushOptions{PlainHTTP: f.plainHTTP})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "pushed\t%s\n", ref)
	return nil
}

// setImageLogger sends the builders' progress lines to the command's
// standard error until the returned function restores the logger.
func setImageLogger(w io.Writer) (restore func()) {
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})))
	return func() { slog.SetDefault(prev) }
}
