package flcli

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// testPKI is a throwaway CA with a server certificate for 127.0.0.1 and a
// client certificate, written as PEM files.
type testPKI struct {
	caFile, clientCert, clientKey string
	server                        tls.Certificate
	pool                          *x509.CertPool
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	ca, err := testenv.NewCA("fl test CA")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(name string, usage x509.ExtKeyUsage) ([]byte, []byte) {
		crt, key, err := ca.Issue(testenv.CertSpec{CommonName: name, Usage: usage, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
		if err != nil {
			t.Fatal(err)
		}
		return crt, key
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := &testPKI{pool: ca.Pool()}
	p.caFile = write("ca.pem", ca.CertPEM)
	srvCert, srvKey := issue("flintlockd", x509.ExtKeyUsageServerAuth)
	if p.server, err = tls.X509KeyPair(srvCert, srvKey); err != nil {
		t.Fatal(err)
	}
	cliCert, cliKey := issue("fl", x509.ExtKeyUsageClientAuth)
	p.clientCert, p.clientKey = write("client.pem", cliCert), write("client-key.pem", cliKey)
	return p
}

func TestTLS(t *testing.T) {
	pki := newTestPKI(t)
	d, addr := startDaemon(t, &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pki.server},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pki.pool,
	})
	uid := d.add(&types.MicroVMSpec{Id: "secure"}, types.MicroVMStatus_CREATED)

	// TLS is the default: with the CA and a client certificate it works,
	// and the token is sent.
	out, _, err := fl(t, "--address", addr, "--tls-ca", pki.caFile, "--tls-cert", pki.clientCert,
		"--tls-key", pki.clientKey, "--token", "tok", "get", uid)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, uid) || d.auth[len(d.auth)-1] != "Basic "+b64("tok") {
		t.Fatalf("out %q auth %q", out, d.auth)
	}

	fails := map[string][]string{
		"unknown CA":            {"--address", addr, "--tls-cert", pki.clientCert, "--tls-key", pki.clientKey},
		"no client certificate": {"--address", addr, "--tls-ca", pki.caFile},
		"plain text":            {"--address", addr, "--insecure"},
	}
	for name, args := range fails {
		_, _, err := fl(t, append(args, "--timeout", "5s", "get", uid)...)
		if err == nil {
			t.Errorf("%s: get succeeded", name)
			continue
		}
		t.Logf("%s: %v", name, err)
		if name == "unknown CA" && !strings.Contains(err.Error(), "certificate signed by unknown authority") {
			t.Errorf("unknown CA: %v", err)
		}
	}

	// Flag mistakes are caught before connecting.
	for _, args := range [][]string{
		{"--insecure", "--tls-ca", pki.caFile},
		{"--tls-cert", pki.clientCert},
		{"--tls-ca", pki.clientKey}, // not a certificate
	} {
		_, _, err := fl(t, append(append([]string{"--address", addr}, args...), "get", uid)...)
		if err == nil || !strings.Contains(err.Error(), "tls") {
			t.Errorf("%v: want a TLS flag error, got %v", args, err)
		}
	}
}
