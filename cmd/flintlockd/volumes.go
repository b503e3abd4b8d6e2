package main

import (
	"log/slog"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/liquidmetal-go/liquidmetal/internal/volumes"
)

// volumeOptions: how VM volumes are made and when unused images go.
type volumeOptions struct {
	method     string
	gcGrace    time.Duration
	gcInterval time.Duration
}

func addVolumeFlags(f *pflag.FlagSet, o *volumeOptions) {
	f.StringVar(&o.method, "volume-method", "", "how VM volumes are made from base images: reflink, qcow2 or copy (default: probed: reflink where the state folder's filesystem clones files, else qcow2)")
	f.DurationVar(&o.gcGrace, "image-gc-grace", time.Hour, "how long base volume images and pulled images no VM uses are kept after their last use")
	f.DurationVar(&o.gcInterval, "image-gc-interval", 10*time.Minute, "period of the image garbage collection (0: off)")
}

// newVolumes sets up the volume provisioner on <state-dir>/volumes and
// exports its method.
func newVolumes(o volumeOptions, stateDir string, reg prometheus.Registerer, log *slog.Logger) (*volumes.Provisioner, error) {
	p, err := volumes.NewProvisioner(volumes.ProvisionerOptions{
		Dir:    filepath.Join(stateDir, "volumes"),
		Method: volumes.Method(o.method),
		Logger: log,
	})
	if err != nil {
		return nil, err
	}
	return p, p.Register(reg)
}
