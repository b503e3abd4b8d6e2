package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/liquidmetal-go/liquidmetal/internal/volumes"
)

// TestVolumeThinPoolRecorded: --volume-thinpool selects devmapper and the
// pool is checked with `dmsetup status` before anything starts. This
// kernel has no device-mapper thin target, so dmsetup is a recording
// runner here, not the real one.
func TestVolumeThinPoolRecorded(t *testing.T) {
	parse := func(args ...string) volumeOptions {
		var o volumeOptions
		f := pflag.NewFlagSet("t", pflag.ContinueOnError)
		addVolumeFlags(f, &o)
		if err := f.Parse(args); err != nil {
			t.Fatal(err)
		}
		return o
	}
	var calls [][]string
	record := func(out string, err error) volumes.Runner {
		return func(_ context.Context, argv []string) ([]byte, error) {
			calls = append(calls, argv)
			return []byte(out), err
		}
	}

	// The pool does not answer: flintlockd refuses to start.
	o := parse("--volume-thinpool", "pool0")
	o.dmRun = record("Device does not exist.", errors.New("dmsetup status pool0: exit status 1: Device does not exist."))
	_, err := newVolumes(o, t.TempDir(), prometheus.NewRegistry(), slog.Default())
	if err == nil || !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "refusing to start") ||
		!strings.Contains(err.Error(), `thin pool "pool0" is not usable`) || !strings.Contains(err.Error(), "Device does not exist") {
		t.Fatalf("unusable pool: %v", err)
	}
	if len(calls) != 1 || strings.Join(calls[0], " ") != "dmsetup status pool0" {
		t.Fatalf("commands: %q", calls)
	}

	// It answers as a thin pool: devmapper is the method.
	calls = nil
	o.dmRun = record("0 20971520 thin-pool 1 94/4096 0/163840 - rw discard_passdown queue_if_no_space - 1024\n", nil)
	p, err := newVolumes(o, t.TempDir(), prometheus.NewRegistry(), slog.Default())
	if err != nil || p.Method() != volumes.MethodDevmapper {
		t.Fatalf("pool: %v, %v", p, err)
	}
	if len(calls) != 1 {
		t.Fatalf("commands: %q", calls)
	}

	// devmapper without a pool, or a pool with another method: refused.
	for _, args := range [][]string{
		{"--volume-method", "devmapper"},
		{"--volume-method", "qcow2", "--volume-thinpool", "pool0"},
	} {
		o := parse(args...)
		o.dmRun = record("", nil)
		if _, err := newVolumes(o, t.TempDir(), prometheus.NewRegistry(), slog.Default()); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%q: %v", args, err)
		}
	}
}
