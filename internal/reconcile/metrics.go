package reconcile

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/store"
)

type metrics struct {
	duration *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer, s *store.Store) (*metrics, error) {
	m := &metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flintlockd_reconcile_duration_seconds",
			Help:    "Duration of one reconcile pass of a microVM.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"result"}),
	}
	if reg == nil {
		return m, nil
	}
	if err := reg.Register(m.duration); err != nil {
		return nil, err
	}
	if err := reg.Register(&stateCollector{store: s}); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *metrics) observe(d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.duration.WithLabelValues(result).Observe(d.Seconds())
}

var vmsDesc = prometheus.NewDesc("flintlockd_microvms", "MicroVMs by state.", []string{"state"}, nil)

// stateCollector counts the stored VMs by state at scrape time.
type stateCollector struct{ store *store.Store }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- vmsDesc }

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	vms, err := c.store.List(context.Background(), "", nil)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(vmsDesc, err)
		return
	}
	counts := map[string]int{}
	for name := range types.MicroVMStatus_MicroVMState_value {
		counts[name] = 0
	}
	for _, vm := range vms {
		counts[vm.GetStatus().GetState().String()]++
	}
	for state, n := range counts {
		ch <- prometheus.MustNewConstMetric(vmsDesc, prometheus.GaugeValue, float64(n), state)
	}
}
