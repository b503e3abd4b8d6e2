// Package hostclient owns CAPMVM's gRPC connections to flintlock hosts: one
// *grpc.ClientConn per host address, reused by every reconcile of every
// machine on that host, with the host's credentials (mutual TLS, a per-host
// basic-auth token) and an optional HTTP CONNECT proxy. A connection whose
// credentials changed, that was shut down, or that sits in
// TRANSIENT_FAILURE is replaced by a fresh one. The pool counts the
// connections it creates (Prometheus metrics and Stats) so that a bench can
// show one connection per host.
package hostclient

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	hostv1 "github.com/liquidmetal-go/liquidmetal/api/services/host/v1alpha1"
	microvmv1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
)

// Credentials says how to reach one host. The zero value is a plaintext
// connection without authentication.
type Credentials struct {
	// CACert (PEM) verifies the host's certificate; with it, or with Cert,
	// the connection uses TLS 1.3. Without it the system roots are used.
	CACert []byte
	// Cert and Key (PEM) are the client certificate for mutual TLS.
	Cert, Key []byte
	// Token is sent on every call as "authorization: Basic base64(Token)",
	// as flintlockd expects.
	Token string
	// Proxy is an HTTP CONNECT proxy: host:port or an http(s) URL, with
	// optional user:password. Empty means grpc's default, which honours the
	// HTTPS_PROXY and NO_PROXY environment variables.
	Proxy string
}

// TLS reports whether the credentials ask for TLS.
func (c Credentials) TLS() bool { return len(c.CACert) > 0 || len(c.Cert) > 0 }

// fingerprint identifies the credentials without keeping the secrets in
// the pool's map keys.
func (c Credentials) fingerprint() [sha256.Size]byte {
	h := sha256.New()
	for _, part := range [][]byte{c.CACert, c.Cert, c.Key, []byte(c.Token), []byte(c.Proxy)} {
		fmt.Fprintf(h, "%d:", len(part))
		h.Write(part)
	}
	var sum [sha256.Size]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// Options configures a Pool.
type Options struct {
	// Registerer receives the pool's metrics; nil leaves them unregistered.
	Registerer prometheus.Registerer
	// ReplaceInterval is the least time between two replacements of one
	// host's connection in TRANSIENT_FAILURE, so that a host that is down
	// is not redialled on every call; 0 means 5 s.
	ReplaceInterval time.Duration
	// DialOptions are added to every connection (tests, keepalive).
	DialOptions []grpc.DialOption
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Stats counts the pool's connections.
type Stats struct {
	// Created is the number of connections created since the pool was made.
	Created int
	// Replaced is how many of them replaced a dead or outdated connection.
	Replaced int
	// Open is the number of connections open now.
	Open int
}

// Pool holds one connection per host address. It is safe for concurrent
// use.
type Pool struct {
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	conns  map[string]*entry // by host address
	stats  Stats
	closed bool

	created  prometheus.Counter
	replaced *prometheus.CounterVec
	open     prometheus.Gauge
}

type entry struct {
	conn    *grpc.ClientConn
	creds   [sha256.Size]byte
	created time.Time
}

// New returns an empty pool and registers its metrics.
func New(opts Options) (*Pool, error) {
	if opts.ReplaceInterval == 0 {
		opts.ReplaceInterval = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	p := &Pool{
		opts:  opts,
		log:   opts.Logger,
		conns: map[string]*entry{},
		created: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "capmvm_host_connections_created_total",
			Help: "gRPC connections to flintlock hosts created by the connection pool.",
		}),
		replaced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "capmvm_host_connections_replaced_total",
			Help: "gRPC connections to flintlock hosts replaced, by reason (shutdown, transient_failure, credentials).",
		}, []string{"reason"}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "capmvm_host_connections_open",
			Help: "gRPC connections to flintlock hosts open in the connection pool.",
		}),
	}
	if r := opts.Registerer; r != nil {
		for _, c := range []prometheus.Collector{p.created, p.replaced, p.open} {
			if err := r.Register(c); err != nil {
				return nil, fmt.Errorf("register host connection metrics: %w", err)
			}
		}
	}
	return p, nil
}

// MicroVM returns a client of the flintlock MicroVM service on the host.
func (p *Pool) MicroVM(address string, creds Credentials) (microvmv1.MicroVMClient, error) {
	cc, err := p.Conn(address, creds)
	if err != nil {
		return nil, err
	}
	return microvmv1.NewMicroVMClient(cc), nil
}

// Host returns a client of the host service (capacity) on the host.
func (p *Pool) Host(address string, creds Credentials) (hostv1.HostServiceClient, error) {
	cc, err := p.Conn(address, creds)
	if err != nil {
		return nil, err
	}
	return hostv1.NewHostServiceClient(cc), nil
}

// Conn returns the pool's connection to address (host:port), creating it
// when there is none, or replacing it when creds differ from the ones it
// was made with, when it was shut down, or when it is in TRANSIENT_FAILURE
// and was made at least ReplaceInterval ago. Creating a connection does not
// dial: grpc connects on the first call.
func (p *Pool) Conn(address string, creds Credentials) (*grpc.ClientConn, error) {
	if address == "" {
		return nil, fmt.Errorf("host address is empty: %w", errdefs.ErrInvalidArgument)
	}
	fp := creds.fingerprint()

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("host connection pool is closed: %w", errdefs.ErrUnavailable)
	}
	old := p.conns[address]
	reason := ""
	if old != nil {
		switch state := old.conn.GetState(); {
		case old.creds != fp:
			reason = "credentials"
		case state == connectivity.Shutdown:
			reason = "shutdown"
		case state == connectivity.TransientFailure && time.Since(old.created) >= p.opts.ReplaceInterval:
			reason = "transient_failure"
		default:
			return old.conn, nil
		}
	}

	cc, err := p.dial(address, creds)
	if err != nil {
		return nil, err
	}
	if old != nil {
		p.log.Info("replacing host connection", "host", address, "reason", reason)
		// Close fails only for a connection already closed; either way
		// it no longer counts as open.
		_ = old.conn.Close()
		p.stats.Open--
		p.open.Dec()
		p.stats.Replaced++
		p.replaced.WithLabelValues(reason).Inc()
	}
	p.conns[address] = &entry{conn: cc, creds: fp, created: time.Now()}
	p.stats.Created++
	p.stats.Open++
	p.created.Inc()
	p.open.Inc()
	return cc, nil
}

// dial builds the connection's options from creds.
func (p *Pool) dial(address string, creds Credentials) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{}
	if creds.TLS() {
		cfg, err := tlsConfig(creds)
		if err != nil {
			return nil, fmt.Errorf("host %s: %w", address, err)
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	} else {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if creds.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(basicAuth{token: creds.Token}))
	}
	target := address
	if creds.Proxy != "" {
		d, err := newConnectDialer(creds.Proxy)
		if err != nil {
			return nil, fmt.Errorf("host %s: %w", address, err)
		}
		// passthrough hands the dialer the host name, which the proxy
		// resolves; grpc's own environment proxy must stay out of the way.
		target = "passthrough:///" + address
		opts = append(opts, grpc.WithContextDialer(d.dial), grpc.WithNoProxy())
	}
	opts = append(opts, p.opts.DialOptions...)
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("host %s: %w", address, err)
	}
	return cc, nil
}

// tlsConfig is TLS 1.3 (flintlockd's minimum) with the CA and the client
// certificate of creds.
func tlsConfig(creds Credentials) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	if len(creds.CACert) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(creds.CACert) {
			return nil, fmt.Errorf("CA certificate holds no PEM certificate: %w", errdefs.ErrInvalidArgument)
		}
		cfg.RootCAs = pool
	}
	if len(creds.Cert) > 0 || len(creds.Key) > 0 {
		cert, err := tls.X509KeyPair(creds.Cert, creds.Key)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Forget closes and drops the connection to address, if any (a host
// removed from every cluster).
func (p *Pool) Forget(address string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.conns[address]; e != nil {
		delete(p.conns, address)
		_ = e.conn.Close()
		p.stats.Open--
		p.open.Dec()
	}
}

// Stats returns the pool's connection counts.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// Close closes every connection; the pool gives out none afterwards.
func (p *Pool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	var errs []error
	for addr, e := range p.conns {
		if err := e.conn.Close(); err != nil && e.conn.GetState() != connectivity.Shutdown {
			errs = append(errs, fmt.Errorf("close connection to %s: %w", addr, err))
		}
		p.stats.Open--
		p.open.Dec()
		delete(p.conns, addr)
	}
	return errors.Join(errs...)
}
