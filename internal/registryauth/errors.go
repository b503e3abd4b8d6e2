package registryauth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// resolver is containerd's resolver with the registries' refusals
// classified (see classify).
type resolver struct {
	remotes.Resolver
}

func (r *resolver) Resolve(ctx context.Context, ref string) (string, ocispec.Descriptor, error) {
	name, desc, err := r.Resolver.Resolve(ctx, ref)
	return name, desc, classify(ref, err)
}

// Fetcher's fetcher classifies refusals of blob fetches too. It offers
// Fetch only, which is all a pull uses.
func (r *resolver) Fetcher(ctx context.Context, ref string) (remotes.Fetcher, error) {
	f, err := r.Resolver.Fetcher(ctx, ref)
	if err != nil {
		return nil, classify(ref, err)
	}
	return fetcher{f: f, ref: ref}, nil
}

// SetOptions passes the client's download limits on.
func (r *resolver) SetOptions(options ...transfer.ImageResolverOption) {
	if o, ok := r.Resolver.(remotes.ResolverWithOptions); ok {
		o.SetOptions(options...)
	}
}

type fetcher struct {
	f   remotes.Fetcher
	ref string
}

func (f fetcher) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	rc, err := f.f.Fetch(ctx, desc)
	return rc, classify(f.ref, err)
}

// classify names the registry and the errdefs kind of a refusal:
// errdefs.ErrUnauthenticated when the registry answered 401 (no
// credentials, or wrong ones) or the authorizer had no credentials to
// answer a challenge with, errdefs.ErrPermissionDenied for 403 (the
// credentials were accepted but do not grant the pull). Other errors are
// returned as they are.
func classify(ref string, err error) error {
	if err == nil {
		return nil
	}
	var st remoteerrors.ErrUnexpectedStatus
	if errors.As(err, &st) {
		host := refHost(ref)
		if u, perr := url.Parse(st.RequestURL); perr == nil && u.Host != "" {
			host = u.Host
		}
		switch st.StatusCode {
		case http.StatusUnauthorized:
			return fmt.Errorf("registry %s: %s: credentials missing or refused: %w: %w", host, st.Status, errdefs.ErrUnauthenticated, err)
		case http.StatusForbidden:
			return fmt.Errorf("registry %s: %s: the credentials do not grant this pull: %w: %w", host, st.Status, errdefs.ErrPermissionDenied, err)
		}
		return err
	}
	if errors.Is(err, docker.ErrInvalidAuthorization) {
		host := refHost(ref)
		var ae authError
		if errors.As(err, &ae) {
			host = ae.host
		}
		return fmt.Errorf("registry %s: 401 Unauthorized: no usable credentials for it: %w: %w", host, errdefs.ErrUnauthenticated, err)
	}
	return err
}

// hostAuthorizer is containerd's authorizer, its failures to answer a
// challenge marked with the host that sent it (a mirror's, with mirrors).
type hostAuthorizer struct {
	docker.Authorizer
}

func (a hostAuthorizer) AddResponses(ctx context.Context, responses []*http.Response) error {
	err := a.Authorizer.AddResponses(ctx, responses)
	if err != nil && len(responses) > 0 && responses[len(responses)-1].Request != nil {
		return authError{host: responses[len(responses)-1].Request.URL.Host, err: err}
	}
	return err
}

// authError is an authorizer's failure for one registry host.
type authError struct {
	host string
	err  error
}

func (e authError) Error() string { return e.err.Error() }
func (e authError) Unwrap() error { return e.err }

// refHost is the registry host of a normalized reference.
func refHost(ref string) string {
	host, _, _ := strings.Cut(ref, "/")
	return host
}
