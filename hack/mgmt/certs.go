package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// cert describes one certificate the CA signs.
type cert struct {
	name   string // files <name>.crt and <name>.key
	cn     string
	org    []string
	dns    []string
	ips    []net.IP
	usages []x509.ExtKeyUsage
}

// certs of the management cluster, all signed by one CA:
//   - apiserver: kube-apiserver's serving certificate
//   - admin: a system:masters client (kubectl, controller-manager, managers)
//   - webhook: the serving certificate of every webhook server on loopback
var certs = []cert{
	{
		name: "apiserver", cn: "kube-apiserver",
		dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		// 10.0.0.1: the kubernetes Service's address in the service range
		// hack/mgmt.sh gives the API server.
		ips:    []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 0, 1)},
		usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	},
	{
		name: "admin", cn: "mgmt-admin", org: []string{"system:masters"},
		usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	},
	{
		name: "webhook", cn: "webhooks",
		dns:    []string{"localhost"},
		ips:    []net.IP{net.IPv4(127, 0, 0, 1)},
		usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	},
}

// writeCerts makes, in dir, the CA (ca.crt, ca.key), the certificates
// above and the service-account signing key pair (sa.key, sa.pub). Files
// that exist are kept, so it is idempotent.
func writeCerts(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, caKey, err := loadOrCreateCA(dir)
	if err != nil {
		return err
	}
	for _, c := range certs {
		if exists(filepath.Join(dir, c.name+".crt")) && exists(filepath.Join(dir, c.name+".key")) {
			continue
		}
		if err := issue(dir, c, ca, caKey); err != nil {
			return fmt.Errorf("certificate %s: %w", c.name, err)
		}
	}
	if !exists(filepath.Join(dir, "sa.key")) {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return err
		}
		pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			return err
		}
		if err := writePEM(filepath.Join(dir, "sa.pub"), "PUBLIC KEY", pub, 0o644); err != nil {
			return err
		}
		if err := writePEM(filepath.Join(dir, "sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func loadOrCreateCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	crtFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if exists(crtFile) && exists(keyFile) {
		crt, err := readPEM(crtFile)
		if err != nil {
			return nil, nil, err
		}
		ca, err := x509.ParseCertificate(crt)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", crtFile, err)
		}
		k, err := readPEM(keyFile)
		if err != nil {
			return nil, nil, err
		}
		key, err := x509.ParseECPrivateKey(k)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", keyFile, err)
		}
		return ca, key, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "liquidmetal-mgmt-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	if err := writePEM(keyFile, "EC PRIVATE KEY", kb, 0o600); err != nil {
		return nil, nil, err
	}
	if err := writePEM(crtFile, "CERTIFICATE", der, 0o644); err != nil {
		return nil, nil, err
	}
	return ca, key, nil
}

func issue(dir string, c cert, ca *x509.Certificate, caKey *ecdsa.PrivateKey) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: c.cn, Organization: c.org},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  c.usages,
		DNSNames:     c.dns,
		IPAddresses:  c.ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, c.name+".key"), "EC PRIVATE KEY", kb, 0o600); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, c.name+".crt"), "CERTIFICATE", der, 0o644)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

func readPEM(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New(path + ": no PEM block")
	}
	return block.Bytes, nil
}
