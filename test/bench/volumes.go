package main

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/liquidmetal-go/liquidmetal/internal/images"
	"github.com/liquidmetal-go/liquidmetal/internal/volumes"
)

var (
	volumeSizes = flag.String("volume-sizes", "64,1024", "root image sizes (MiB) of the volume provisioning figure (empty: skip)")
	volumeVMs   = flag.Int("volume-vms", 10, "volumes made per image size after the first pull")
	volumesOnly = flag.Bool("volumes-only", false, "run only the volume provisioning figure")
)

// volumeRow is one image size of the volume provisioning figure.
type volumeRow struct {
	sizeMB    int
	method    volumes.Method
	firstPull time.Duration // registry → containerd, unpacked
	baseBuild time.Duration // the ext4 base image (first VM only)
	perVM     []time.Duration
	rawPerVM  []time.Duration // the raw-only fallback (sparse copy) on a qcow2 host
}

// volumesPhase times what a VM's volume step costs, in process against the
// set-up's containerd and registry: the first pull of a root image of each
// size, the one-time base image build, and then per VM the cached pull
// under its own lease plus its copy-on-write volume.
func (b *bench) volumesPhase(ctx context.Context) error {
	var sizes []int
	for _, f := range strings.Split(*volumeSizes, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return fmt.Errorf("-volume-sizes: %q", f)
		}
		sizes = append(sizes, n)
	}
	if len(sizes) == 0 {
		return nil
	}
	c, err := containerd.New(b.env.Containerd.Address)
	if err != nil {
		return err
	}
	defer c.Close()
	dir := filepath.Join(b.o.dir, "volumes-bench")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := images.New(c, images.Options{Namespace: "bench-volumes", TempDir: b.o.dir, Logger: quiet})
	prov, err := volumes.NewProvisioner(volumes.ProvisionerOptions{Dir: filepath.Join(dir, "state"), Logger: quiet})
	if err != nil {
		return err
	}
	var leaseIDs []string
	var refs []string
	defer func() {
		cctx := context.WithoutCancel(ctx)
		for _, id := range leaseIDs {
			_ = svc.DeleteLease(cctx, id)
		}
		for _, r := range refs {
			_ = svc.RemoveImage(cctx, r)
		}
		_, _ = prov.GC(0)
	}()
	vmDir := filepath.Join(dir, "vm")
	if err := os.MkdirAll(vmDir, 0o750); err != nil {
		return err
	}
	for _, mb := range sizes {
		b.step("volumes: pushing a %d MiB root image", mb)
		ref, err := pushDataImage(ctx, b.env.Registry.Host, mb)
		if err != nil {
			return err
		}
		refs = append(refs, ref)
		row := volumeRow{sizeMB: mb, method: prov.Method()}
		vm := func(i int, raw bool) (time.Duration, error) {
			uid := fmt.Sprintf("bench-%d-%d-%v", mb, i, raw)
			leaseIDs = append(leaseIDs, uid)
			start := time.Now()
			lctx, err := svc.EnsureLease(ctx, uid)
			if err != nil {
				return 0, err
			}
			img, err := svc.Pull(lctx, ref)
			if err != nil {
				return 0, err
			}
			pulled := time.Now()
			build := func(ctx context.Context, dst string) error {
				return svc.WithMounted(lctx, uid, img, func(root string) error {
					return volumes.BuildExt4(ctx, root, dst, 0, "root")
				})
			}
			v, err := prov.Volume(lctx, volumes.BaseKey{Digest: img.ChainID.String()}, build,
				filepath.Join(vmDir, uid+".img"), volumes.VolumeOptions{RawOnly: raw})
			if err != nil {
				return 0, err
			}
			if i == 0 && !raw {
				row.firstPull = pulled.Sub(start)
				row.baseBuild = time.Since(pulled)
				if !v.BaseBuilt {
					return 0, errors.New("the first volume did not build the base image")
				}
			}
			return time.Since(start), nil
		}
		b.step("volumes: first pull and base image of %d MiB", mb)
		if _, err := vm(0, false); err != nil {
			return err
		}
		b.step("volumes: %d volumes of %d MiB", *volumeVMs, mb)
		for i := 1; i <= *volumeVMs; i++ {
			d, err := vm(i, false)
			if err != nil {
				return err
			}
			row.perVM = append(row.perVM, d)
		}
		if prov.Method() == volumes.MethodQcow2 {
			for i := 1; i <= 3; i++ {
				d, err := vm(i, true)
				if err != nil {
					return err
				}
				row.rawPerVM = append(row.rawPerVM, d)
			}
		}
		b.volumes = append(b.volumes, row)
	}
	return nil
}

func (b *bench) reportVolumes(w io.Writer) {
	if len(b.volumes) == 0 {
		return
	}
	t := &table{
		title: "Volumes: per-VM root volume provisioning after the first pull",
		head:  []string{"image", "method", "first pull", "base image (once)", "per VM p50", "per VM max", "target", "raw-only copy p50"},
	}
	for _, r := range b.volumes {
		raw := "-"
		if len(r.rawPerVM) > 0 {
			raw = ms(pct(r.rawPerVM, 0.5))
		}
		t.add(fmt.Sprintf("%d MiB", r.sizeMB), string(r.method), ms(r.firstPull), ms(r.baseBuild),
			ms(pct(r.perVM, 0.5)), ms(slices.Max(r.perVM)), "≤50 ms, same for every size", raw)
	}
	t.note("per VM: a cached pull under the VM's own lease plus its copy-on-write volume of the shared base image")
	t.note("raw-only copy: the sparse full copy Firecracker/Cloud Hypervisor get where reflinks are missing (grows with the data)")
	t.print(w)
}

// pushDataImage pushes an image whose root holds mb MiB of pseudo-random
// data (uncompressible, so the pull moves every byte) and returns its
// reference.
func pushDataImage(ctx context.Context, host string, mb int) (string, error) {
	ref := fmt.Sprintf("%s/bench/data:%dm", host, mb)
	opener := func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() {
			tw := tar.NewWriter(pw)
			err := tw.WriteHeader(&tar.Header{Name: "data.bin", Mode: 0o644, Size: int64(mb) << 20, Typeflag: tar.TypeReg})
			if err == nil {
				// A fixed seed: every opening yields the same bytes.
				rng := rand.NewChaCha8([32]byte{byte(mb), byte(mb >> 8)})
				_, err = io.CopyN(tw, rng, int64(mb)<<20)
			}
			if err == nil {
				err = tw.Close()
			}
			pw.CloseWithError(err)
		}()
		return pr, nil
	}
	layer, err := tarball.LayerFromOpener(opener, tarball.WithCompressionLevel(gzip.NoCompression))
	if err != nil {
		return "", err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return "", err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return "", err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return "", err
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
		return "", fmt.Errorf("pushing %s: %w", ref, err)
	}
	return ref, nil
}
