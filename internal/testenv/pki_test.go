package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
)

// A server and a client certificate of one CA complete a mutual TLS
// handshake on loopback; a certificate of another CA is refused.
func TestPKIMutualTLS(t *testing.T) {
	ca, err := NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, err := ca.Issue(CertSpec{CommonName: "server", Usage: x509.ExtKeyUsageServerAuth, IPs: LoopbackIPs})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	// The CA read back from PEM issues as well as the original.
	loaded, err := LoadCA(ca.CertPEM, mustKeyPEM(t, ca))
	if err != nil {
		t.Fatal(err)
	}
	cliCert, cliKey, err := loaded.Issue(CertSpec{CommonName: "client", Usage: x509.ExtKeyUsageClientAuth})
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewCA("other CA")
	if err != nil {
		t.Fatal(err)
	}
	strangerCert, strangerKey, err := other.Issue(CertSpec{CommonName: "stranger", Usage: x509.ExtKeyUsageClientAuth})
	if err != nil {
		t.Fatal(err)
	}

	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{srv},
		ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			_, _ = c.Write([]byte("ok"))
			c.Close()
		}
	}()
	dial := func(certPEM, keyPEM []byte) error {
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return err
		}
		c, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{
			MinVersion: tls.VersionTLS13, RootCAs: ca.Pool(), Certificates: []tls.Certificate{pair},
		})
		if err != nil {
			return err
		}
		defer c.Close()
		// With TLS 1.3 the server's verdict on the client certificate
		// arrives with the first read.
		b := make([]byte, 2)
		_, err = c.Read(b)
		return err
	}
	if err := dial(cliCert, cliKey); err != nil {
		t.Fatalf("client of the CA: %v", err)
	}
	if err := dial(strangerCert, strangerKey); err == nil {
		t.Fatal("a client certificate of another CA was accepted")
	}
	if !net.IPv6loopback.Equal(LoopbackIPs[3]) {
		t.Fatalf("LoopbackIPs %v", LoopbackIPs)
	}
}

func mustKeyPEM(t *testing.T, ca *CA) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pemBlock("PRIVATE KEY", der)
}
