package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSecureDaemon runs flintlockd as the systemd unit does, with TLS,
// client certificates and a token, and drives it with the fl binary: only a
// client holding both the certificate and the token gets through, and the
// served RPCs show in /metrics.
func TestSecureDaemon(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t)
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", ca.Raw)
	issue(t, dir, "server", ca, caKey, x509.ExtKeyUsageServerAuth)
	issue(t, dir, "client", ca, caKey, x509.ExtKeyUsageClientAuth)
	token := "s3cret-token"
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "--insecure=false",
		"--tls-cert", filepath.Join(dir, "server.pem"), "--tls-key", filepath.Join(dir, "server-key.pem"),
		"--tls-client-ca", filepath.Join(dir, "ca.pem"),
		"--basic-auth-token-file", filepath.Join(dir, "token"))

	fl := func(args ...string) (string, error) {
		cmd := exec.Command(env.FL, append([]string{"--address", d.GRPCAddr, "--timeout", "20s"}, args...)...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		if err != nil {
			return out.String() + errOut.String(), err
		}
		return out.String(), nil
	}
	tlsArgs := []string{"--tls-ca", filepath.Join(dir, "ca.pem"),
		"--tls-cert", filepath.Join(dir, "client.pem"), "--tls-key", filepath.Join(dir, "client-key.pem")}

	refused := map[string][]string{
		"plain text":          {"--insecure", "--token", token, "list"},
		"no client cert":      {"--tls-ca", filepath.Join(dir, "ca.pem"), "--token", token, "list"},
		"no token":            append(append([]string{}, tlsArgs...), "list"),
		"wrong token":         append(append([]string{}, tlsArgs...), "--token", "nope", "list"),
		"unknown server (CA)": {"--tls-cert", filepath.Join(dir, "client.pem"), "--tls-key", filepath.Join(dir, "client-key.pem"), "--token", token, "list"},
	}
	for name, args := range refused {
		out, err := fl(args...)
		if err == nil {
			t.Errorf("%s: fl list succeeded, want refused:\n%s", name, out)
		}
		if strings.HasPrefix(name, "no token") || strings.HasPrefix(name, "wrong token") {
			if !strings.Contains(strings.ToLower(out), "unauthenticated") {
				t.Errorf("%s: want Unauthenticated, got:\n%s", name, out)
			}
		}
	}

	ok := func(args ...string) string {
		t.Helper()
		out, err := fl(append(append(append([]string{}, tlsArgs...), "--token", token), args...)...)
		if err != nil {
			t.Fatalf("fl %s over mTLS with the token: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	out := ok("create", "--wait", "-o", "json", "--namespace", "secure", "--name", "tls-vm",
		"--kernel-image", env.Images.Kernel, "--initrd-image", env.Images.Initrd, "--vcpu", "1", "--memory", "256")
	var created struct {
		Spec   struct{ UID string }
		Status struct{ State string }
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.Spec.UID == "" {
		t.Fatalf("fl create -o json: %v\n%s", err, out)
	}
	// create --wait returns once the VM is CREATED; get shows it.
	if err := json.Unmarshal([]byte(ok("get", "-o", "json", created.Spec.UID)), &created); err != nil || created.Status.State != "CREATED" {
		t.Fatalf("fl get after create --wait: state %q (%v), want CREATED", created.Status.State, err)
	}
	if out := ok("list", "--namespace", "secure"); !strings.Contains(out, "tls-vm") {
		t.Fatalf("fl list lacks the VM:\n%s", out)
	}
	ok("delete", "--wait", created.Spec.UID)
	if pids := vmmProcesses(created.Spec.UID); len(pids) != 0 {
		t.Fatalf("VMM processes left after delete: %v", pids)
	}

	resp, err := http.Get("http://" + d.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`CreateMicroVM`, `ListMicroVMs`, `code="Unauthenticated"`} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "e2e ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// issue writes <name>.pem and <name>-key.pem, signed by ca, valid for
// 127.0.0.1.
func issue(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
	writePEM(t, filepath.Join(dir, name+"-key.pem"), "EC PRIVATE KEY", kder)
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
