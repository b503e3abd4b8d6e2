package images

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

// LeasePrefix starts the name of every VM's lease: "flintlock-<uid>".
const LeasePrefix = "flintlock-"

// uidLabel is set on leases and view snapshots to name the VM.
const uidLabel = "flintlock/vm-uid"

// LeaseID returns the name of the VM's containerd lease.
func LeaseID(uid string) string { return LeasePrefix + uid }

func checkUID(uid string) error {
	if uid == "" || strings.ContainsAny(uid, "/\x00") {
		return fmt.Errorf("VM uid %q: %w", uid, errdefs.ErrInvalidArgument)
	}
	return nil
}

// EnsureLease creates the VM's lease unless it exists, and returns ctx
// carrying it and the service's namespace: pulls and views made with that
// context belong to the VM. The lease has no expiry; DeleteLease ends it.
func (s *Service) EnsureLease(ctx context.Context, uid string) (context.Context, error) {
	if err := checkUID(uid); err != nil {
		return nil, err
	}
	ctx = s.withNamespace(ctx)
	id := LeaseID(uid)
	_, err := s.client.LeasesService().Create(ctx, leases.WithID(id), leases.WithLabel(uidLabel, uid))
	if err != nil && !errdefs.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating lease %s: %w", id, err)
	}
	return leases.WithLease(ctx, id), nil
}

// DeleteLease deletes the VM's lease and, before returning, everything it
// alone kept: content, snapshots and views. A missing lease is not an
// error.
func (s *Service) DeleteLease(ctx context.Context, uid string) error {
	if err := checkUID(uid); err != nil {
		return err
	}
	ctx = s.withNamespace(ctx)
	id := LeaseID(uid)
	err := s.client.LeasesService().Delete(ctx, leases.Lease{ID: id}, leases.SynchronousDelete)
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("deleting lease %s: %w", id, err)
	}
	return nil
}

// LeaseExists tells whether the VM's lease exists.
func (s *Service) LeaseExists(ctx context.Context, uid string) (bool, error) {
	if err := checkUID(uid); err != nil {
		return false, err
	}
	ls, err := s.client.LeasesService().List(s.withNamespace(ctx), fmt.Sprintf("id==%q", LeaseID(uid)))
	if err != nil {
		return false, fmt.Errorf("listing leases: %w", err)
	}
	return len(ls) > 0, nil
}

// Leftovers is what containerd still holds for a VM.
type Leftovers struct {
	// Lease is true when the VM's lease exists.
	Lease bool
	// Resources are the lease's content, snapshot and ingest references.
	Resources []leases.Resource
	// Views are the keys of view snapshots made for the VM (in the
	// service's snapshotter).
	Views []string
}

// Empty tells whether nothing is left.
func (l Leftovers) Empty() bool {
	return !l.Lease && len(l.Resources) == 0 && len(l.Views) == 0
}

// Leftovers lists what containerd still holds for the VM: after
// DeleteLease it is empty.
func (s *Service) Leftovers(ctx context.Context, uid string) (Leftovers, error) {
	var out Leftovers
	exists, err := s.LeaseExists(ctx, uid)
	if err != nil {
		return out, err
	}
	ctx = s.withNamespace(ctx)
	if exists {
		out.Lease = true
		out.Resources, err = s.client.LeasesService().ListResources(ctx, leases.Lease{ID: LeaseID(uid)})
		if err != nil && !errdefs.IsNotFound(err) {
			return out, fmt.Errorf("listing lease resources: %w", err)
		}
	}
	sn, err := s.Snapshotter(ctx)
	if err != nil {
		return out, err
	}
	prefix := viewPrefix(uid)
	err = s.client.SnapshotService(sn).Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if strings.HasPrefix(info.Name, prefix) || info.Labels[uidLabel] == uid {
			out.Views = append(out.Views, info.Name)
		}
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("listing snapshots: %w", err)
	}
	sort.Strings(out.Views)
	return out, nil
}
