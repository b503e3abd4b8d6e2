// Package images owns flintlockd's use of containerd for OCI images: it
// pulls and unpacks images into a snapshotter under one containerd lease per
// VM (named "flintlock-<uid>"), mounts read-only views of unpacked images,
// and copies files (kernel, initrd) out of them onto the host, keeping an
// optional per-image cache of extracted files.
//
// Images stay in containerd's image store after a pull: the store is the
// cache that makes a second pull of the same reference skip the registry.
// A VM's lease also references what it pulled, so that removing an image
// (RemoveImage) never takes content from under a live VM; deleting the lease
// (DeleteLease) releases it.
package images

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/liquidmetal-go/liquidmetal/internal/keylock"
)

// DefaultNamespace is the containerd namespace used when Options.Namespace
// is empty (the one flintlock uses).
const DefaultNamespace = "flintlock"

// Snapshotters tried, in order, when Options.Snapshotter is empty.
const (
	SnapshotterOverlayFS = "overlayfs"
	SnapshotterNative    = "native"
)

const snapshotPluginType = "io.containerd.snapshotter.v1"

// Options configures a Service.
type Options struct {
	// Namespace is the containerd namespace for images, leases and
	// snapshots; DefaultNamespace when empty.
	Namespace string
	// Snapshotter unpacks images. Empty means overlayfs, or native when
	// the daemon's overlayfs snapshotter is missing or failed to start
	// (detected on first use). A named snapshotter must be usable.
	Snapshotter string
	// PlainHTTP lists registry hosts ("host:port") reached over plain
	// HTTP. Loopback registries (localhost, 127.0.0.0/8, ::1) always are.
	PlainHTTP []string
	// Resolver, when set, returns the registry resolver of one pull:
	// credentials, mirrors and TLS per registry host (see
	// internal/registryauth). PlainHTTP is then unused. When nil, pulls
	// are anonymous.
	Resolver func(ctx context.Context) remotes.Resolver
	// CacheDir keeps files copied out of images (kernel, initrd), one
	// folder per unpacked image, so later copies are hard links. Empty
	// disables the cache. Keep it on the same filesystem as the VM folders
	// or copies are made instead of links.
	CacheDir string
	// TempDir is where image views are mounted while in use; os.TempDir()
	// when empty.
	TempDir string
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
}

// Service pulls images through a containerd client. It is safe for
// concurrent use.
type Service struct {
	client *client.Client
	opts   Options
	log    *slog.Logger
	// platform selects the manifest to pull and unpack: the host's.
	platform platforms.MatchComparer

	snMu sync.Mutex
	sn   string // resolved snapshotter, once known

	locks keylock.Map
}

// Image is an image pulled and unpacked in containerd.
type Image struct {
	// Ref is the normalized reference, the image's name in containerd.
	Ref string
	// Digest is the digest of the image's target (manifest or index).
	Digest digest.Digest
	// ChainID names the committed snapshot of the unpacked root tree.
	ChainID digest.Digest
	// Snapshotter holds the unpacked snapshot.
	Snapshotter string
	// Cached is true when the pull found the image complete in containerd
	// and made no registry request.
	Cached bool
}

// New returns a Service using c (which the caller keeps and closes).
func New(c *client.Client, opts Options) *Service {
	if opts.Namespace == "" {
		opts.Namespace = DefaultNamespace
	}
	if opts.TempDir == "" {
		opts.TempDir = os.TempDir()
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Service{
		client:   c,
		opts:     opts,
		log:      log.With("component", "images"),
		platform: platforms.Default(),
	}
}

// Namespace returns the containerd namespace the service works in.
func (s *Service) Namespace() string { return s.opts.Namespace }

// withNamespace sets the service's namespace on ctx (keeping the lease).
func (s *Service) withNamespace(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, s.opts.Namespace)
}

// Snapshotter returns the snapshotter images are unpacked into, resolving
// it on first use: the configured one, or overlayfs falling back to native.
func (s *Service) Snapshotter(ctx context.Context) (string, error) {
	s.snMu.Lock()
	defer s.snMu.Unlock()
	if s.sn != "" {
		return s.sn, nil
	}
	resp, err := s.client.IntrospectionService().Plugins(s.withNamespace(ctx), "type=="+snapshotPluginType)
	if err != nil {
		return "", fmt.Errorf("listing containerd snapshotters: %w", err)
	}
	status := map[string]string{} // id -> "" when usable, else why not
	for _, p := range resp.Plugins {
		why := ""
		if p.InitErr != nil {
			why = p.InitErr.Message
			if why == "" {
				why = "failed to initialize"
			}
		}
		status[p.ID] = why
	}
	candidates := []string{SnapshotterOverlayFS, SnapshotterNative}
	if s.opts.Snapshotter != "" {
		candidates = []string{s.opts.Snapshotter}
	}
	var reasons []error
	for _, name := range candidates {
		why, ok := status[name]
		switch {
		case !ok:
			reasons = append(reasons, fmt.Errorf("snapshotter %s is not loaded in containerd", name))
		case why != "":
			reasons = append(reasons, fmt.Errorf("snapshotter %s: %s", name, why))
		default:
			if name != candidates[0] {
				s.log.Warn("falling back to another snapshotter", "snapshotter", name, "reason", errors.Join(reasons...))
			}
			s.sn = name
			return name, nil
		}
	}
	return "", fmt.Errorf("no usable snapshotter: %w: %w", errdefs.ErrFailedPrecondition, errors.Join(reasons...))
}

// NormalizeRef returns the canonical form of an image reference as it is
// named in containerd ("alpine" -> "docker.io/library/alpine:latest").
func NormalizeRef(ref string) (string, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w: %w", ref, errdefs.ErrInvalidArgument, err)
	}
	return named.String(), nil
}

// Pull makes ref available, unpacked, and returns it. When ctx carries a
// lease (EnsureLease) the image's content and snapshot are added to it.
//
// IfNotPresent: when the image is already in containerd's image store with
// all its content, no registry request is made (it is unpacked locally if
// its snapshot is missing). A tag moved in the registry is therefore not
// seen until RemoveImage.
// A failed pull returns an error naming ref (wrapping errdefs.ErrNotFound
// when the registry does not know it, errdefs.ErrUnavailable when the
// registry cannot be reached); what it fetched belongs to the lease and
// goes with DeleteLease.
func (s *Service) Pull(ctx context.Context, ref string) (_ Image, retErr error) {
	name, err := NormalizeRef(ref)
	if err != nil {
		return Image{}, err
	}
	ctx = s.withNamespace(ctx)
	defer func() {
		if retErr == nil {
			s.markUsed(ctx, name) // the last use, for GC
		}
	}()
	sn, err := s.Snapshotter(ctx)
	if err != nil {
		return Image{}, err
	}
	// One pull per reference at a time: a concurrent second caller waits
	// and then takes the fast path.
	unlock := s.locks.Lock("pull\x00" + name)
	defer unlock()

	img, st, err := s.lookup(ctx, name, sn)
	if err != nil {
		return Image{}, fmt.Errorf("image %q: %w", ref, err)
	}
	switch st.state {
	case imageReady:
		img.Cached = true
		return img, s.leaseImage(ctx, img)
	case imageContentOnly:
		// All content is here but not unpacked (another snapshotter, or
		// the snapshot was removed): unpack without the registry.
		s.log.Info("unpacking image", "ref", name, "snapshotter", sn)
		if err := client.NewImageWithPlatform(s.client, st.record, s.platform).Unpack(ctx, sn); err != nil {
			return Image{}, fmt.Errorf("unpacking image %q: %w", ref, err)
		}
		img.Cached = true
		return img, s.leaseImage(ctx, img)
	}

	s.log.Info("pulling image", "ref", name, "snapshotter", sn)
	_, err = s.client.Pull(ctx, name,
		client.WithPullUnpack,
		client.WithPullSnapshotter(sn),
		client.WithResolver(s.resolver(ctx)),
		client.WithPlatformMatcher(s.platform),
	)
	if err != nil {
		return Image{}, pullError(ref, err)
	}
	img, st, err = s.lookup(ctx, name, sn)
	if err != nil {
		return Image{}, fmt.Errorf("image %q after pull: %w", ref, err)
	}
	if st.state != imageReady {
		return Image{}, fmt.Errorf("image %q is incomplete after pull: %w", ref, errdefs.ErrUnknown)
	}
	return img, s.leaseImage(ctx, img)
}

type imageState int

const (
	imageMissing     imageState = iota // not in the store, or content missing
	imageContentOnly                   // all content, no unpacked snapshot
	imageReady                         // all content and the snapshot
)

type lookupResult struct {
	state  imageState
	record images.Image
}

// lookup finds the image named name in containerd: its record, the
// manifest for this platform, its config and layers, and the committed
// snapshot of its root tree. The image is returned when the state is not
// imageMissing.
func (s *Service) lookup(ctx context.Context, name, sn string) (Image, lookupResult, error) {
	var res lookupResult
	missing := func(err error) (Image, lookupResult, error) {
		if errdefs.IsNotFound(err) {
			return Image{}, lookupResult{}, nil
		}
		return Image{}, lookupResult{}, err
	}
	rec, err := s.client.ImageService().Get(ctx, name)
	if err != nil {
		return missing(err)
	}
	res.record = rec
	cs := s.client.ContentStore()
	manifest, err := images.Manifest(ctx, cs, rec.Target, s.platform)
	if err != nil {
		return missing(err)
	}
	diffIDs, err := images.RootFS(ctx, cs, manifest.Config)
	if err != nil {
		return missing(err)
	}
	if len(diffIDs) == 0 {
		return Image{}, res, fmt.Errorf("image has no layers: %w", errdefs.ErrInvalidArgument)
	}
	img := Image{Ref: name, Digest: rec.Target.Digest, ChainID: identity.ChainID(diffIDs), Snapshotter: sn}
	// Unpacked is enough: a pull does not fetch the blobs of layers whose
	// snapshots already exist (shared with an image unpacked before), so
	// those blobs may be absent for good.
	info, err := s.client.SnapshotService(sn).Stat(ctx, img.ChainID.String())
	switch {
	case err == nil && info.Kind == snapshots.KindCommitted:
		res.state = imageReady
		return img, res, nil
	case err != nil && !errdefs.IsNotFound(err):
		return Image{}, res, err
	}
	for _, l := range manifest.Layers {
		if _, err := cs.Info(ctx, l.Digest); err != nil {
			return missing(err)
		}
	}
	res.state = imageContentOnly
	return img, res, nil
}

// leaseImage adds the image to ctx's lease, when there is one. The target
// is enough: the garbage collector follows the labels containerd put on it
// to the manifests, config, layers and the unpacked snapshot.
func (s *Service) leaseImage(ctx context.Context, img Image) error {
	id, ok := leases.FromContext(ctx)
	if !ok {
		return nil
	}
	err := s.client.LeasesService().AddResource(ctx, leases.Lease{ID: id}, leases.Resource{
		ID:   img.Digest.String(),
		Type: "content",
	})
	if err != nil {
		return fmt.Errorf("adding image %q to lease %s: %w", img.Ref, id, err)
	}
	return nil
}

// RemoveImage removes ref from containerd's image store. Its content and
// snapshots go once no lease holds them; with no lease left, they are gone
// when RemoveImage returns. A missing image is not an error.
func (s *Service) RemoveImage(ctx context.Context, ref string) error {
	name, err := NormalizeRef(ref)
	if err != nil {
		return err
	}
	err = s.client.ImageService().Delete(s.withNamespace(ctx), name, images.SynchronousDelete())
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("removing image %q: %w", ref, err)
	}
	return nil
}

// resolver returns Options.Resolver's resolver, or else an anonymous one
// using plain HTTP for loopback hosts and Options.PlainHTTP.
func (s *Service) resolver(ctx context.Context) remotes.Resolver {
	if s.opts.Resolver != nil {
		return s.opts.Resolver(ctx)
	}
	return docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(
			docker.WithPlainHTTP(s.plainHTTP),
			docker.WithAuthorizer(docker.NewDockerAuthorizer()),
		),
	})
}

// plainHTTP tells whether host is reached over plain HTTP.
func (s *Service) plainHTTP(host string) (bool, error) {
	for _, h := range s.opts.PlainHTTP {
		if h == host {
			return true, nil
		}
	}
	return docker.MatchLocalhost(host)
}

// pullError names the reference and classifies err.
func pullError(ref string, err error) error {
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("pulling image %q: not found: %w", ref, err)
	}
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("pulling image %q: registry unreachable: %w: %w", ref, errdefs.ErrUnavailable, err)
	}
	return fmt.Errorf("pulling image %q: %w", ref, err)
}
