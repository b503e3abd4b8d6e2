package server

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"

	powerv1 "github.com/liquidmetal-go/liquidmetal/api/services/power/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/console"
)

// Console reads: the default and largest answer of GetConsole, and the
// chunk size of StreamConsole.
const (
	defaultConsoleBytes = 64 << 10
	maxConsoleBytes     = 1 << 20
	consoleChunk        = 32 << 10
	// consoleCheckEvery is how often a followed console checks that its VM
	// still exists.
	consoleCheckEvery = time.Second
)

// consoleDir is the folder of the VM's console, checking that the
// identity from the store makes plain path elements.
func (p *powerService) consoleDir(ctx context.Context, uid string) (string, error) {
	if uid == "" {
		return "", fmt.Errorf("uid: required: %w", errdefs.ErrInvalidArgument)
	}
	if p.stateDir == "" {
		return "", fmt.Errorf("consoles are not served by this daemon: %w", errdefs.ErrNotImplemented)
	}
	vm, err := p.s.store.Get(ctx, uid)
	if err != nil {
		return "", err
	}
	return vmFolder(p.stateDir, vm.GetSpec())
}

func vmFolder(stateDir string, spec *types.MicroVMSpec) (string, error) {
	parts := []string{spec.GetNamespace(), spec.GetId(), spec.GetUid()}
	for _, s := range parts {
		if s == "" || s == "." || s == ".." || filepath.Base(s) != s {
			return "", fmt.Errorf("microvm identity %q is not a plain path: %w", parts, errdefs.ErrFailedPrecondition)
		}
	}
	return filepath.Join(stateDir, "vm", parts[0], parts[1], parts[2]), nil
}

// GetConsole returns a piece of the VM's console output.
func (p *powerService) GetConsole(ctx context.Context, req *powerv1.GetConsoleRequest) (*powerv1.GetConsoleResponse, error) {
	dir, err := p.consoleDir(ctx, req.GetUid())
	if err != nil {
		return nil, p.s.toStatus(ctx, err)
	}
	n := int(req.GetMaxBytes())
	switch {
	case n < 0:
		return nil, p.s.toStatus(ctx, fmt.Errorf("max_bytes: negative: %w", errdefs.ErrInvalidArgument))
	case n == 0:
		n = defaultConsoleBytes
	}
	c, err := console.Read(dir, req.GetOffset(), min(n, maxConsoleBytes))
	if err != nil {
		return nil, p.s.toStatus(ctx, err)
	}
	return &powerv1.GetConsoleResponse{
		Offset:     c.Offset,
		Data:       c.Data,
		NextOffset: c.Offset + int64(len(c.Data)),
		EndOffset:  c.End,
	}, nil
}

// StreamConsole sends the VM's console output from the offset; with follow
// it waits for more until the client cancels or the VM is gone.
func (p *powerService) StreamConsole(req *powerv1.StreamConsoleRequest, stream powerv1.PowerService_StreamConsoleServer) error {
	ctx := stream.Context()
	dir, err := p.consoleDir(ctx, req.GetUid())
	if err != nil {
		return p.s.toStatus(ctx, err)
	}
	off := req.GetOffset()
	lastCheck := time.Now()
	gone := false
	for {
		c, err := console.Read(dir, off, consoleChunk)
		if err != nil {
			return p.s.toStatus(ctx, err)
		}
		off = c.Offset + int64(len(c.Data))
		if len(c.Data) > 0 {
			if err := stream.Send(&powerv1.ConsoleChunk{Offset: c.Offset, Data: c.Data}); err != nil {
				return err
			}
			continue
		}
		// At the end: done unless following a VM that still exists (after
		// it is gone, the last read above drained what it wrote).
		if !req.GetFollow() || gone {
			return nil
		}
		if time.Since(lastCheck) >= consoleCheckEvery {
			lastCheck = time.Now()
			_, err := p.s.store.Get(ctx, req.GetUid())
			if errdefs.IsNotFound(err) {
				gone = true
				continue
			}
			if err != nil {
				return p.s.toStatus(ctx, err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(p.consolePoll):
		}
	}
}
