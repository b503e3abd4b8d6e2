package hostclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// connectDialer opens a tunnel to a host through an HTTP CONNECT proxy.
type connectDialer struct {
	proxyAddr  string // host:port of the proxy
	serverName string // for TLS to an https proxy
	useTLS     bool
	auth       string // Proxy-Authorization value, if the URL has a user
}

// newConnectDialer parses a proxy given as host:port or as an http(s) URL
// with optional user:password.
func newConnectDialer(proxy string) (*connectDialer, error) {
	raw := proxy
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("proxy %q is not host:port or an http(s) URL: %w", proxy, errdefs.ErrInvalidArgument)
	}
	d := &connectDialer{serverName: u.Hostname()}
	port := u.Port()
	switch u.Scheme {
	case "http":
		if port == "" {
			port = "80"
		}
	case "https":
		d.useTLS = true
		if port == "" {
			port = "443"
		}
	default:
		return nil, fmt.Errorf("proxy %q: scheme %q is not http or https: %w", proxy, u.Scheme, errdefs.ErrInvalidArgument)
	}
	d.proxyAddr = net.JoinHostPort(u.Hostname(), port)
	if u.User != nil {
		pw, _ := u.User.Password()
		d.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pw))
	}
	return d, nil
}

// dial connects to the proxy and asks it for a tunnel to addr (host:port).
// The returned connection carries the tunnel; grpc runs TLS and HTTP/2
// over it.
func (d *connectDialer) dial(ctx context.Context, addr string) (_ net.Conn, err error) {
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "tcp", d.proxyAddr)
	if err != nil {
		return nil, fmt.Errorf("dial proxy %s: %w", d.proxyAddr, err)
	}
	defer func() {
		if err != nil {
			conn.Close()
		}
	}()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	} else {
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	}
	if d.useTLS {
		tc := tls.Client(conn, &tls.Config{ServerName: d.serverName, MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("TLS to proxy %s: %w", d.proxyAddr, err)
		}
		conn = tc
	}

	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Opaque: addr},
		Host:   addr,
		Header: http.Header{},
	}
	if d.auth != "" {
		req.Header.Set("Proxy-Authorization", d.auth)
	}
	if err := req.Write(conn); err != nil {
		return nil, fmt.Errorf("CONNECT %s via %s: %w", addr, d.proxyAddr, err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("CONNECT %s via %s: %w", addr, d.proxyAddr, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("CONNECT %s via %s: proxy answered %s: %w", addr, d.proxyAddr, resp.Status, errdefs.ErrUnavailable)
	}
	_ = conn.SetDeadline(time.Time{})
	if br.Buffered() > 0 {
		// The proxy sent tunnel bytes right after its answer.
		return &bufferedConn{Conn: conn, r: br}, nil
	}
	return conn, nil
}

// bufferedConn reads first what the CONNECT response reader buffered.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(b []byte) (int, error) { return c.r.Read(b) }
