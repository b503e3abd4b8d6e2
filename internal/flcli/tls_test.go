package flcli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/liquidmetal-go/liquidmetal/api/types"
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
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fl test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(serial int64, name string, usage x509.ExtKeyUsage) ([]byte, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature,
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := &testPKI{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.caFile = write("ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	srvCert, srvKey := issue(2, "flintlockd", x509.ExtKeyUsageServerAuth)
	if p.server, err = tls.X509KeyPair(srvCert, srvKey); err != nil {
		t.Fatal(err)
	}
	cliCert, cliKey := issue(3, "fl", x509.ExtKeyUsageClientAuth)
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
