// Command testimages builds the Liquid Metal test guest (kernel, initrd and
// busybox root filesystem from Debian packages, cached by kernel version)
// and, given a registry, pushes the kernel, initrd and root images there.
// It prints shell export lines:
//
//	eval "$(go run ./hack/testimages --registry "$REGISTRY")"
//
// sets LIQUIDMETAL_KERNEL_IMAGE, LIQUIDMETAL_INITRD_IMAGE and
// LIQUIDMETAL_ROOT_IMAGE (and the LIQUIDMETAL_GUEST_* file paths).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
	"github.com/liquidmetal-go/liquidmetal/internal/testimages"
)

func main() {
	registry := flag.String("registry", "", "registry host:port to push the images to (plain HTTP on loopback); empty: build only")
	cache := flag.String("cache", "", "cache folder of the builds (default <repo>/bin/cache/guest)")
	repo := flag.String("repo", "liquidmetal", "repository prefix of the images")
	tag := flag.String("tag", "", "tag of the images (default: the kernel version)")
	flag.Parse()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *registry, *cache, *repo, *tag); err != nil {
		fmt.Fprintln(os.Stderr, "testimages:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, registry, cache, repo, tag string) error {
	if cache == "" {
		root, err := testenv.RepoRoot()
		if err != nil {
			return fmt.Errorf("no --cache and %w", err)
		}
		cache = filepath.Join(root, "bin", "cache", "guest")
	}
	a, err := testimages.Build(ctx, cache)
	if err != nil {
		return err
	}
	export("LIQUIDMETAL_GUEST_KERNEL_VERSION", a.KernelVersion)
	export("LIQUIDMETAL_GUEST_VMLINUZ", a.Vmlinuz)
	export("LIQUIDMETAL_GUEST_VMLINUX", a.Vmlinux)
	export("LIQUIDMETAL_GUEST_INITRD", a.Initrd)
	export("LIQUIDMETAL_GUEST_ROOTFS", a.RootFSDir)
	if registry == "" {
		return nil
	}
	opts := []testimages.PushOption{testimages.WithRepository(repo)}
	if tag != "" {
		opts = append(opts, testimages.WithTag(tag))
	}
	imgs, err := testimages.Push(ctx, a, registry, opts...)
	if err != nil {
		return err
	}
	export("LIQUIDMETAL_KERNEL_IMAGE", imgs.Kernel)
	export("LIQUIDMETAL_INITRD_IMAGE", imgs.Initrd)
	export("LIQUIDMETAL_ROOT_IMAGE", imgs.Root)
	return nil
}

// export prints a shell export line, the value single-quoted.
func export(name, value string) {
	fmt.Printf("export %s='%s'\n", name, strings.ReplaceAll(value, "'", `'\''`))
}
