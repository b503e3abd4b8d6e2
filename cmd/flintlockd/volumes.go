package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/liquidmetal-go/liquidmetal/internal/volumes"
)

// volumeOptions: how VM volumes are made and when unused images go.
type volumeOptions struct {
	method     string
	thinPool   string
	gcGrace    time.Duration
	gcInterval time.Duration

	// dmRun replaces the dmsetup runner (tests: no thin target here).
	dmRun volumes.Runner
}

func addVolumeFlags(f *pflag.FlagSet, o *volumeOptions) {
	f.StringVar(&o.method, "volume-method", "", "how VM volumes are made from base images: reflink, qcow2, copy or devmapper (default: devmapper with --volume-thinpool, else probed: reflink where the state folder's filesystem clones files, else qcow2)")
	f.StringVar(&o.thinPool, "volume-thinpool", "", "device-mapper thin pool (its name under /dev/mapper) in which VM volumes are thin snapshots of base images; selects --volume-method devmapper")
	f.DurationVar(&o.gcGrace, "image-gc-grace", time.Hour, "how long base volume images and pulled images no VM uses are kept after their last use")
	f.DurationVar(&o.gcInterval, "image-gc-interval", 10*time.Minute, "period of the image garbage collection (0: off)")
}

// thinPoolCheckTimeout bounds the start-up check of the thin pool.
const thinPoolCheckTimeout = 30 * time.Second

// newVolumes sets up the volume provisioner on <state-dir>/volumes and
// exports its method. With devmapper the thin pool must answer
// `dmsetup status`, or flintlockd does not start.
func newVolumes(o volumeOptions, stateDir string, reg prometheus.Registerer, log *slog.Logger) (*volumes.Provisioner, error) {
	method := volumes.Method(o.method)
	var pool *volumes.ThinPool
	switch {
	case o.thinPool != "" && method != "" && method != volumes.MethodDevmapper:
		return nil, fmt.Errorf("--volume-thinpool %q needs --volume-method devmapper (or none), not %q: %w", o.thinPool, o.method, errdefs.ErrInvalidArgument)
	case o.thinPool != "":
		pool = &volumes.ThinPool{Name: o.thinPool, Run: o.dmRun}
	case method == volumes.MethodDevmapper:
		return nil, fmt.Errorf("--volume-method devmapper needs --volume-thinpool: %w", errdefs.ErrInvalidArgument)
	}
	if pool != nil {
		ctx, cancel := context.WithTimeout(context.Background(), thinPoolCheckTimeout)
		defer cancel()
		if err := pool.Check(ctx); err != nil {
			return nil, fmt.Errorf("--volume-thinpool: refusing to start: %w", err)
		}
	}
	p, err := volumes.NewProvisioner(volumes.ProvisionerOptions{
		Dir:      filepath.Join(stateDir, "volumes"),
		Method:   method,
		ThinPool: pool,
		Logger:   log,
	})
	if err != nil {
		return nil, err
	}
	return p, p.Register(reg)
}
