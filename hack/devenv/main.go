// Command devenv runs, in the foreground until it is signalled, what a
// flintlockd host needs around it for the demo: a private containerd and a
// registry on loopback holding the test kernel, initrd and root images. It
// writes shell export lines for them to <dir>/env once everything is up.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
	"github.com/liquidmetal-go/liquidmetal/internal/testimages"
)

func main() {
	dir := flag.String("dir", "", "folder of the services' files (required)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "devenv: --dir is required")
		os.Exit(2)
	}
	if err := run(*dir); err != nil {
		fmt.Fprintln(os.Stderr, "devenv:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	envFile := filepath.Join(dir, "env")
	_ = os.Remove(envFile)

	cd, err := testenv.StartContainerd(ctx, filepath.Join(dir, "containerd"))
	if err != nil {
		return err
	}
	defer cd.Stop()
	log.Info("containerd running", "address", cd.Address)

	bin, err := testenv.RegistryBinary(ctx)
	if err != nil {
		return err
	}
	reg, err := testenv.StartRegistry(ctx, bin, filepath.Join(dir, "registry"), "")
	if err != nil {
		return err
	}
	defer reg.Stop()
	log.Info("registry running", "host", reg.Host)

	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	art, err := testimages.Build(ctx, filepath.Join(root, "bin", "cache", "guest"))
	if err != nil {
		return err
	}
	imgs, err := testimages.Push(ctx, art, reg.Host)
	if err != nil {
		return err
	}
	env := fmt.Sprintf("export CONTAINERD_ADDRESS=%q\nexport REGISTRY=%q\nexport KERNEL_IMAGE=%q\nexport INITRD_IMAGE=%q\nexport ROOT_IMAGE=%q\n",
		cd.Address, reg.Host, imgs.Kernel, imgs.Initrd, imgs.Root)
	if err := os.WriteFile(envFile+".tmp", []byte(env), 0o644); err != nil {
		return err
	}
	if err := os.Rename(envFile+".tmp", envFile); err != nil {
		return err
	}
	log.Info("images pushed; services up until SIGTERM", "kernel", imgs.Kernel, "initrd", imgs.Initrd, "root", imgs.Root)
	<-ctx.Done()
	_ = os.Remove(envFile)
	return nil
}
