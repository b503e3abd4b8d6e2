package hostclient_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	hostv1 "github.com/liquidmetal-go/liquidmetal/api/services/host/v1alpha1"
	microvmv1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/controller/flintlocktest"
	"github.com/liquidmetal-go/liquidmetal/internal/hostclient"
	"github.com/liquidmetal-go/liquidmetal/internal/server"
	"github.com/liquidmetal-go/liquidmetal/internal/store"
)

func newPool(t *testing.T, opts hostclient.Options) *hostclient.Pool {
	t.Helper()
	p, err := hostclient.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func startDouble(t *testing.T, opts flintlocktest.Options) *flintlocktest.Server {
	t.Helper()
	s, err := flintlocktest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestOneConnectionPerHost makes many concurrent calls to two hosts
// through the pool and checks, on the servers' side, that each host
// accepted exactly one TCP connection.
func TestOneConnectionPerHost(t *testing.T) {
	ctx := ctxT(t)
	reg := prometheus.NewRegistry()
	p := newPool(t, hostclient.Options{Registerer: reg})
	hosts := []*flintlocktest.Server{startDouble(t, flintlocktest.Options{}), startDouble(t, flintlocktest.Options{})}

	var wg sync.WaitGroup
	var failures atomic.Int32
	for i := range 200 {
		h := hosts[i%2]
		wg.Go(func() {
			c, err := p.MicroVM(h.Addr(), hostclient.Credentials{})
			if err != nil {
				failures.Add(1)
				return
			}
			_, err = c.GetMicroVM(ctx, &microvmv1.GetMicroVMRequest{Uid: "01J0000000000000000000000"})
			if status.Code(err) != codes.NotFound {
				failures.Add(1)
			}
		})
	}
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d calls did not get NotFound", n)
	}
	for _, h := range hosts {
		if got := h.Connections(); got != 1 {
			t.Errorf("host %s accepted %d connections for 100 calls, want 1", h.Addr(), got)
		}
		if got := h.Calls("GetMicroVM"); got != 100 {
			t.Errorf("host %s served %d calls, want 100", h.Addr(), got)
		}
	}
	if st := p.Stats(); st.Created != 2 || st.Open != 2 || st.Replaced != 0 {
		t.Errorf("stats = %+v, want 2 created, 2 open", st)
	}
	if got := metricValue(t, reg, "capmvm_host_connections_created_total"); got != 2 {
		t.Errorf("capmvm_host_connections_created_total = %v, want 2", got)
	}
	if got := metricValue(t, reg, "capmvm_host_connections_open"); got != 2 {
		t.Errorf("capmvm_host_connections_open = %v, want 2", got)
	}
}

// metricValue reads a counter or gauge from a registry.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// nopQueue stands in for flintlockd's reconciler: the VMs stay PENDING.
type nopQueue struct{}

func (nopQueue) Enqueue(string) {}

// TestMutualTLSAndTokenAgainstFlintlockdServer talks to flintlockd's own
// API server (internal/server with a real store; no reconciler) over
// mutual TLS with a basic-auth token.
func TestMutualTLSAndTokenAgainstFlintlockdServer(t *testing.T) {
	ctx := ctxT(t)
	pki, err := flintlocktest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string][]byte{"ca.crt": pki.CACert, "tls.crt": pki.ServerCert, "tls.key": pki.ServerKey}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tlsCfg, err := server.TLSConfig(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "flintlockd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	const token = "s3cret-token"
	srv, err := server.New(server.Config{Store: st, Queue: nopQueue{}, Providers: []string{"qemu"}, DefaultProvider: "qemu", Token: token})
	if err != nil {
		t.Fatal(err)
	}
	gs := srv.GRPCServer(credentials.NewTLS(tlsCfg))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	addr := lis.Addr().String()

	good := hostclient.Credentials{CACert: pki.CACert, Cert: pki.ClientCert, Key: pki.ClientKey, Token: token}
	p := newPool(t, hostclient.Options{})
	c, err := p.MicroVM(addr, good)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.CreateMicroVM(ctx, &microvmv1.CreateMicroVMRequest{Microvm: &types.MicroVMSpec{
		Id: "vm-1", Namespace: "ns", Kernel: &types.Kernel{Image: "example.org/kernel:1"},
	}})
	if err != nil {
		t.Fatalf("create over mutual TLS with the token: %v", err)
	}
	stored, err := st.Get(ctx, resp.GetMicrovm().GetSpec().GetUid())
	if err != nil || stored.GetSpec().GetId() != "vm-1" {
		t.Fatalf("stored VM = %v, %v", stored, err)
	}
	hc, err := p.Host(addr, good)
	if err != nil {
		t.Fatal(err)
	}
	capResp, err := hc.GetCapacity(ctx, &hostv1.GetCapacityRequest{})
	if err != nil || capResp.GetMicrovmCount() != 1 {
		t.Fatalf("GetCapacity = %v, %v; want one microVM counted", capResp, err)
	}

	// A changed token replaces the connection, and the server refuses it.
	bad := good
	bad.Token = "wrong"
	c, err = p.MicroVM(addr, bad)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.GetMicroVM(ctx, &microvmv1.GetMicroVMRequest{Uid: resp.GetMicrovm().GetSpec().GetUid()})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("wrong token: %v, want Unauthenticated", err)
	}
	if st := p.Stats(); st.Replaced != 1 || st.Open != 1 {
		t.Fatalf("after a credentials change: %+v, want 1 replaced, 1 open", st)
	}

	// Without a client certificate the handshake fails.
	noCert := good
	noCert.Cert, noCert.Key = nil, nil
	c, err = p.MicroVM(addr, noCert)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.GetMicroVM(ctx, &microvmv1.GetMicroVMRequest{Uid: "x"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("no client certificate: %v, want Unavailable", err)
	}

	// Broken TLS material is an invalid argument, found before any dial.
	if _, err := p.Conn(addr, hostclient.Credentials{CACert: []byte("not PEM")}); err == nil {
		t.Fatal("a CA that is not PEM was accepted")
	}
}

// connectProxy is an HTTP CONNECT proxy on loopback that counts tunnels.
type connectProxy struct {
	addr    string
	tunnels atomic.Int32
	targets sync.Map
	auth    string // wanted Proxy-Authorization, if set
}

func startProxy(t *testing.T, auth string) *connectProxy {
	t.Helper()
	p := &connectProxy{auth: auth}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = lis.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(p.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return p
}

func (p *connectProxy) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
		return
	}
	if p.auth != "" && r.Header.Get("Proxy-Authorization") != p.auth {
		http.Error(w, "proxy authentication required", http.StatusProxyAuthRequired)
		return
	}
	up, err := net.Dial("tcp", r.Host)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	p.tunnels.Add(1)
	p.targets.Store(r.Host, true)
	hj, ok := w.(http.Hijacker)
	if !ok {
		up.Close()
		return
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		up.Close()
		return
	}
	_, _ = conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
	go func() {
		defer up.Close()
		defer conn.Close()
		go func() { _, _ = io.Copy(up, buf) }()
		_, _ = io.Copy(conn, up)
	}()
}

// TestProxy reaches a host only through the CONNECT proxy of the
// credentials, with and without proxy authentication.
func TestProxy(t *testing.T) {
	ctx := ctxT(t)
	host := startDouble(t, flintlocktest.Options{Token: "tok"})
	for _, tc := range []struct {
		name, proxyAuth, url string
	}{
		{"host:port", "", ""},
		{"URL with user", "Basic dXNlcjpwYXNz", "http://user:pass@"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy := startProxy(t, tc.proxyAuth)
			p := newPool(t, hostclient.Options{})
			c, err := p.MicroVM(host.Addr(), hostclient.Credentials{Token: "tok", Proxy: tc.url + proxy.addr})
			if err != nil {
				t.Fatal(err)
			}
			before := host.Calls("ListMicroVMs")
			for range 5 {
				if _, err := c.ListMicroVMs(ctx, &microvmv1.ListMicroVMsRequest{}); err != nil {
					t.Fatalf("list through the proxy: %v", err)
				}
			}
			if got := host.Calls("ListMicroVMs") - before; got != 5 {
				t.Fatalf("host served %d calls, want 5", got)
			}
			if n := proxy.tunnels.Load(); n != 1 {
				t.Fatalf("proxy opened %d tunnels, want 1", n)
			}
			if _, ok := proxy.targets.Load(host.Addr()); !ok {
				t.Fatalf("the proxy was not asked for %s", host.Addr())
			}
		})
	}

	t.Run("proxy refuses", func(t *testing.T) {
		proxy := startProxy(t, "Basic c29tZW9uZTplbHNl")
		p := newPool(t, hostclient.Options{})
		c, err := p.MicroVM(host.Addr(), hostclient.Credentials{Token: "tok", Proxy: proxy.addr})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.ListMicroVMs(ctx, &microvmv1.ListMicroVMsRequest{})
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "407") {
			t.Fatalf("err = %v, want Unavailable naming the proxy's 407", err)
		}
	})
}

// TestDeadConnectionsAreReplaced covers a connection shut down under the
// pool and a host that went away and came back.
func TestDeadConnectionsAreReplaced(t *testing.T) {
	ctx := ctxT(t)
	host := startDouble(t, flintlocktest.Options{})
	p := newPool(t, hostclient.Options{ReplaceInterval: 50 * time.Millisecond})
	list := func() error {
		c, err := p.MicroVM(host.Addr(), hostclient.Credentials{})
		if err != nil {
			return err
		}
		_, err = c.ListMicroVMs(ctx, &microvmv1.ListMicroVMsRequest{})
		return err
	}
	if err := list(); err != nil {
		t.Fatal(err)
	}

	// Shut down by someone else: the next Conn is a new connection.
	cc, err := p.Conn(host.Addr(), hostclient.Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	_ = cc.Close()
	if err := list(); err != nil {
		t.Fatalf("after shutdown: %v", err)
	}
	if st := p.Stats(); st.Created != 2 || st.Replaced != 1 || st.Open != 1 {
		t.Fatalf("after shutdown: %+v", st)
	}

	// The host goes away: calls fail, the connection falls into
	// TRANSIENT_FAILURE.
	host.Stop()
	cc, _ = p.Conn(host.Addr(), hostclient.Credentials{})
	if err := list(); status.Code(err) != codes.Unavailable {
		t.Fatalf("host down: %v, want Unavailable", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for cc.GetState() != connectivity.TransientFailure && time.Now().Before(deadline) {
		_ = list()
		time.Sleep(20 * time.Millisecond)
	}
	if s := cc.GetState(); s != connectivity.TransientFailure {
		t.Fatalf("state with the host down = %s", s)
	}
	// It comes back: after ReplaceInterval the pool dials afresh instead
	// of waiting out grpc's reconnect backoff.
	if err := host.Restart(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(60 * time.Millisecond)
	if err := list(); err != nil {
		t.Fatalf("host back: %v", err)
	}
	next, _ := p.Conn(host.Addr(), hostclient.Credentials{})
	if next == cc {
		t.Fatal("the connection in TRANSIENT_FAILURE was not replaced")
	}
	if st := p.Stats(); st.Open != 1 || st.Replaced < 2 {
		t.Fatalf("after the host came back: %+v", st)
	}
}
