package flintlocktest

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// PKI is a throwaway certificate authority with a server certificate for
// loopback (127.0.0.1 to 127.0.0.3, ::1, localhost) and a client
// certificate, all PEM.
type PKI struct {
	CACert                []byte
	ServerCert, ServerKey []byte
	ClientCert, ClientKey []byte
}

// NewPKI makes a CA and the two certificates, valid for a day.
func NewPKI() (*PKI, error) {
	ca, err := testenv.NewCA("flintlocktest CA")
	if err != nil {
		return nil, err
	}
	p := &PKI{CACert: ca.CertPEM}
	if p.ServerCert, p.ServerKey, err = ca.Issue(testenv.CertSpec{
		CommonName: "flintlockd", Usage: x509.ExtKeyUsageServerAuth,
		IPs: testenv.LoopbackIPs, DNSNames: []string{"localhost"},
	}); err != nil {
		return nil, err
	}
	if p.ClientCert, p.ClientKey, err = ca.Issue(testenv.CertSpec{
		CommonName: "capmvm", Usage: x509.ExtKeyUsageClientAuth,
	}); err != nil {
		return nil, err
	}
	return p, nil
}

// ServerTLS is flintlockd's TLS set-up: TLS 1.3 at least, and the client
// must present a certificate of the CA (mutual TLS).
func (p *PKI) ServerTLS() (*tls.Config, error) {
	cert, err := tls.X509KeyPair(p.ServerCert, p.ServerKey)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(p.CACert) {
		return nil, fmt.Errorf("flintlocktest: bad CA")
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}
