package server

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	hostv1 "github.com/liquidmetal-go/liquidmetal/api/services/host/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// CapacityConfig sets what the host service reports as the capacity of the
// host. Zero values mean "measure the host".
type CapacityConfig struct {
	// VCPUs is the number of host CPUs; 0 means runtime.NumCPU().
	VCPUs int
	// VCPUOvercommit multiplies the host CPUs into the vCPUs offered to
	// microVMs; 0 means 1 (no overcommit).
	VCPUOvercommit float64
	// MemoryMiB is the host memory; 0 means MemTotal of /proc/meminfo.
	MemoryMiB int64
	// ReservedMemoryMiB is kept for the host itself and not offered to
	// microVMs.
	ReservedMemoryMiB int64
	// Hostname is reported instead of the kernel's host name when set.
	Hostname string
	// Version is the flintlockd version; the Go build information's when
	// empty.
	Version string
}

// hostService implements the host service. Totals are fixed when the
// server is made; allocation is read from the store on each call.
type hostService struct {
	hostv1.UnimplementedHostServiceServer
	s *Server

	totalVCPU   uint32
	totalMemMiB uint32
	hostname    string
	version     string
}

var _ hostv1.HostServiceServer = (*hostService)(nil)

// newHostService measures what cfg leaves unset and checks the result.
func newHostService(s *Server, cfg CapacityConfig) (*hostService, error) {
	if cfg.VCPUs < 0 || cfg.VCPUOvercommit < 0 || math.IsNaN(cfg.VCPUOvercommit) || math.IsInf(cfg.VCPUOvercommit, 0) ||
		cfg.MemoryMiB < 0 || cfg.ReservedMemoryMiB < 0 {
		return nil, fmt.Errorf("capacity %+v: negative or non-finite value: %w", cfg, errdefs.ErrInvalidArgument)
	}
	cpus := cfg.VCPUs
	if cpus == 0 {
		cpus = runtime.NumCPU()
	}
	ratio := cfg.VCPUOvercommit
	if ratio == 0 {
		ratio = 1
	}
	mem := cfg.MemoryMiB
	if mem == 0 {
		var err error
		if mem, err = memTotalMiB("/proc/meminfo"); err != nil {
			return nil, err
		}
	}
	if cfg.ReservedMemoryMiB >= mem {
		return nil, fmt.Errorf("reserved memory %d MiB leaves nothing of the host's %d MiB: %w",
			cfg.ReservedMemoryMiB, mem, errdefs.ErrInvalidArgument)
	}
	vcpus := math.Floor(float64(cpus) * ratio)
	if vcpus < 1 {
		return nil, fmt.Errorf("%d CPUs with overcommit %g offer no vCPU: %w", cpus, ratio, errdefs.ErrInvalidArgument)
	}
	version := cfg.Version
	if version == "" {
		version = buildVersion()
	}
	return &hostService{
		s:           s,
		totalVCPU:   saturate(int64(min(vcpus, math.MaxUint32))),
		totalMemMiB: saturate(mem - cfg.ReservedMemoryMiB),
		hostname:    cfg.Hostname,
		version:     version,
	}, nil
}

// GetCapacity reports the host's totals and what its microVMs leave free.
// The allocation is summed over one read transaction of the store.
func (h *hostService) GetCapacity(ctx context.Context, _ *hostv1.GetCapacityRequest) (*hostv1.GetCapacityResponse, error) {
	resp, err := h.capacity(ctx)
	if err != nil {
		return nil, h.s.toStatus(ctx, err)
	}
	return resp, nil
}

func (h *hostService) capacity(ctx context.Context) (*hostv1.GetCapacityResponse, error) {
	vms, err := h.s.store.List(ctx, "", nil)
	if err != nil {
		return nil, fmt.Errorf("list microvms: %w", err)
	}
	var vcpu, mem, count int64
	for _, vm := range vms {
		if !holdsResources(vm) {
			continue
		}
		vcpu += int64(max(vm.GetSpec().GetVcpu(), 0))
		mem += int64(max(vm.GetSpec().GetMemoryInMb(), 0))
		count++
	}
	hostname := h.hostname
	if hostname == "" {
		if hostname, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("host name: %w", err)
		}
	}
	return &hostv1.GetCapacityResponse{
		Hostname:           hostname,
		Version:            h.version,
		TotalVcpu:          h.totalVCPU,
		AllocatedVcpu:      saturate(vcpu),
		FreeVcpu:           saturate(int64(h.totalVCPU) - vcpu),
		TotalMemoryMib:     h.totalMemMiB,
		AllocatedMemoryMib: saturate(mem),
		FreeMemoryMib:      saturate(int64(h.totalMemMiB) - mem),
		MicrovmCount:       saturate(count),
	}, nil
}

// holdsResources reports whether a stored VM counts against the host's
// capacity: not being deleted, and not FAILED (a failed VM has released its
// VMM and devices).
func holdsResources(vm *types.MicroVM) bool {
	if vm.GetSpec().GetDeletedAt() != nil {
		return false
	}
	switch vm.GetStatus().GetState() {
	case types.MicroVMStatus_DELETING, types.MicroVMStatus_FAILED:
		return false
	}
	return true
}

// saturate clamps v into the range of a uint32.
func saturate(v int64) uint32 {
	switch {
	case v < 0:
		return 0
	case v > math.MaxUint32:
		return math.MaxUint32
	}
	return uint32(v)
}

// memTotalMiB reads MemTotal (in kB) from a meminfo file.
func memTotalMiB(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("read host memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("%s: unexpected MemTotal line %q: %w", path, sc.Text(), errdefs.ErrUnknown)
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: MemTotal: %w", path, err)
		}
		return kb / 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return 0, fmt.Errorf("%s has no MemTotal line: %w", path, errdefs.ErrNotFound)
}

// buildVersion is the main module's version from the Go build information,
// with the VCS revision when the build recorded one.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && s.Value != "" {
			rev := s.Value
			if len(rev) > 12 {
				rev = rev[:12]
			}
			v += "+" + rev
		}
	}
	return v
}

// hostGateway runs gateway calls of the host service through the server's
// unary interceptor chain, as a gRPC call would be.
type hostGateway struct {
	hostv1.UnimplementedHostServiceServer
	h *hostService
}

func (g hostGateway) GetCapacity(ctx context.Context, req *hostv1.GetCapacityRequest) (*hostv1.GetCapacityResponse, error) {
	return invoke(g.h.s, ctx, hostv1.HostService_GetCapacity_FullMethodName, req, g.h.GetCapacity)
}
