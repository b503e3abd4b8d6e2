package imagebuild

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// newImage is an OCI image for linux/amd64 made of the cached layers, in
// order, with the labels and command. Nothing in it depends on the time,
// so equal layers give equal digests.
func newImage(layers []Layer, labels map[string]string, cmd []string) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	adds := make([]mutate.Addendum, 0, len(layers))
	for _, l := range layers {
		vl, err := l.v1Layer()
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.Addendum{Layer: vl, MediaType: types.OCILayer, History: v1.History{CreatedBy: l.CreatedBy}})
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Labels = labels
	cf.Config.Cmd = cmd
	return mutate.ConfigFile(img, cf)
}

// PushOptions tune Push.
type PushOptions struct {
	// Keychain finds the registry's credentials; default
	// authn.DefaultKeychain (docker's config.json: $DOCKER_CONFIG or
	// ~/.docker, with its credential helpers, and podman's auth.json).
	Keychain authn.Keychain
	// PlainHTTP talks plain HTTP to the registry. Loopback registries
	// (localhost, 127.0.0.0/8, ::1) get it without asking.
	PlainHTTP bool
}

// Push uploads img to ref (registry/repository:tag) and returns the
// pushed reference by digest (registry/repository@sha256:...). Blobs the
// registry already has are not sent again.
func Push(ctx context.Context, img v1.Image, ref string, o PushOptions) (string, error) {
	r, err := parseRef(ref, o.PlainHTTP)
	if err != nil {
		return "", err
	}
	kc := o.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	if err := remote.Write(r, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(kc)); err != nil {
		return "", fmt.Errorf("push %s: %w", r, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return r.Context().Digest(d.String()).String(), nil
}

func parseRef(ref string, plainHTTP bool) (name.Reference, error) {
	opts := []name.Option{name.StrictValidation}
	if plainHTTP || isLoopbackRegistry(ref) {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %v: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	return r, nil
}

// isLoopbackRegistry tells whether the reference's registry host is on
// this machine.
func isLoopbackRegistry(ref string) bool {
	host, _, _ := strings.Cut(ref, "/")
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
