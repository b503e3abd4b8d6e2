package testimages

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Paths of the artifacts inside the images.
const (
	KernelPath       = "boot/vmlinux"
	KernelBzImgPath  = "boot/vmlinuz"
	KernelConfigPath = "boot/config"
	InitrdPath       = "boot/initrd.img"
)

// Images are the full references of pushed images.
type Images struct {
	// Kernel holds boot/vmlinux, boot/vmlinuz and boot/config.
	Kernel string
	// Initrd holds boot/initrd.img.
	Initrd string
	// Root is the root filesystem (busybox, /sbin/init).
	Root string
}

type pushOptions struct {
	repo     string
	tag      string
	auth     authn.Authenticator
	insecure bool
}

// PushOption changes how Push names and sends the images.
type PushOption func(*pushOptions)

// WithRepository sets the repository prefix (default "liquidmetal"): the
// images are PREFIX/kernel, PREFIX/initrd and PREFIX/root.
func WithRepository(prefix string) PushOption { return func(o *pushOptions) { o.repo = prefix } }

// WithTag sets the tag of all three images (default: the kernel version).
func WithTag(tag string) PushOption { return func(o *pushOptions) { o.tag = tag } }

// WithBasicAuth sends a user name and password to the registry.
func WithBasicAuth(user, password string) PushOption {
	return func(o *pushOptions) { o.auth = &authn.Basic{Username: user, Password: password} }
}

// WithPlainHTTP talks plain HTTP to any registry host (loopback and
// private-network hosts get plain HTTP without it).
func WithPlainHTTP() PushOption { return func(o *pushOptions) { o.insecure = true } }

// Push uploads the kernel, initrd and root images of a build to the
// registry at registryHost (host:port) for linux/amd64 and returns their
// references. The layers are made once per build and kept in a.Dir/layers;
// blobs the registry already has are not sent again.
func Push(ctx context.Context, a *Artifacts, registryHost string, opts ...PushOption) (Images, error) {
	o := pushOptions{repo: "liquidmetal", tag: a.KernelVersion, auth: authn.Anonymous}
	for _, opt := range opts {
		opt(&o)
	}
	specs := []struct {
		image string
		layer string
		tree  func() (tree, error)
	}{
		{"kernel", "kernel.tar.gz", a.kernelTree},
		{"initrd", "initrd.tar.gz", a.initrdTree},
		{"root", "root.tar.gz", func() (tree, error) { return treeFromDir(a.RootFSDir) }},
	}

	var nameOpts []name.Option
	if o.insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	refs := make([]string, len(specs))
	for i, s := range specs {
		refStr := fmt.Sprintf("%s/%s/%s:%s", registryHost, o.repo, s.image, o.tag)
		ref, err := name.ParseReference(refStr, append(nameOpts, name.StrictValidation)...)
		if err != nil {
			return Images{}, fmt.Errorf("image reference %q: %w", refStr, err)
		}
		layerFile, err := a.ensureLayer(s.layer, s.tree)
		if err != nil {
			return Images{}, err
		}
		img, err := singleLayerImage(layerFile, s.image, a)
		if err != nil {
			return Images{}, fmt.Errorf("image %s: %w", s.image, err)
		}
		if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithAuth(o.auth)); err != nil {
			return Images{}, fmt.Errorf("push %s: %w", refStr, err)
		}
		refs[i] = ref.String()
	}
	return Images{Kernel: refs[0], Initrd: refs[1], Root: refs[2]}, nil
}

func (a *Artifacts) kernelTree() (tree, error) {
	t := tree{}
	t.copyOf(KernelPath, 0o644, a.Vmlinux)
	t.copyOf(KernelBzImgPath, 0o644, a.Vmlinuz)
	t.copyOf(KernelConfigPath, 0o644, a.Config)
	return t, nil
}

func (a *Artifacts) initrdTree() (tree, error) {
	t := tree{}
	t.copyOf(InitrdPath, 0o644, a.Initrd)
	return t, nil
}

// ensureLayer returns a.Dir/layers/<file>, a gzip'd tar of the tree, making
// it when missing. Its bytes depend only on the tree, so digests are stable.
func (a *Artifacts) ensureLayer(file string, mk func() (tree, error)) (string, error) {
	p := filepath.Join(a.Dir, "layers", file)
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", err
	}
	t, err := mk()
	if err != nil {
		return "", fmt.Errorf("layer %s: %w", file, err)
	}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err := t.writeTar(zw); err != nil {
		return "", fmt.Errorf("layer %s: %w", file, err)
	}
	if err := zw.Close(); err != nil {
		return "", err
	}
	// Unique temp name: other processes may make the same layer meanwhile.
	tmp, err := os.CreateTemp(filepath.Dir(p), file+".*")
	if err != nil {
		return "", err
	}
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return "", err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return "", err
	}
	return p, os.Rename(tmp.Name(), p)
}

// singleLayerImage is an OCI image for linux/amd64 with one layer.
func singleLayerImage(layerFile, kind string, a *Artifacts) (v1.Image, error) {
	layer, err := tarball.LayerFromFile(layerFile, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{CreatedBy: "liquidmetal testimages " + kind},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":  "liquidmetal test " + kind,
		"io.liquidmetal.kernel.version":   a.KernelVersion,
		"io.liquidmetal.kernel.debian":    a.KernelPackageVersion,
		"io.liquidmetal.testimages.build": recipeID(),
	}
	if kind == "root" {
		cf.Config.Entrypoint = []string{"/sbin/init"}
	}
	return mutate.ConfigFile(img, cf)
}
