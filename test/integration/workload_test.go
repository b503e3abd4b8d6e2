package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
	"github.com/liquidmetal-go/liquidmetal/test/framework"
)

// controlPlanePort is the control-plane endpoint's port in the templates.
const controlPlanePort = 6443

// pickVIP chooses the CONTROL_PLANE_VIP: a loopback address (outside
// 127.0.0.1) whose port 6443 is free, so that the workload API server can
// bind the very endpoint the cluster's kubeconfig names.
func pickVIP(t *testing.T) string {
	t.Helper()
	for range 50 {
		vip := fmt.Sprintf("127.%d.%d.%d", 100+mrand.IntN(100), mrand.IntN(256), 2+mrand.IntN(250))
		l, err := net.Listen("tcp", net.JoinHostPort(vip, strconv.Itoa(controlPlanePort)))
		if err == nil {
			l.Close()
			return vip
		}
	}
	t.Fatal("no loopback address with a free port 6443")
	return ""
}

// workloadPKI are the files kubeadm init takes from the control-plane
// guest's user-data (CABPK writes them under /etc/kubernetes/pki).
var workloadPKI = []string{"ca.crt", "ca.key", "sa.pub", "sa.key"}

// startWorkloadAPIServer stands in for what kubeadm init starts inside the
// control-plane guest: etcd and a real kube-apiserver, serving on vip:6443
// with a certificate signed by the cluster CA the guest received, trusting
// client certificates of that CA (the cluster's admin kubeconfig) and
// signing service-account tokens with the guest's sa.key. Both processes
// are ended when the test ends.
func startWorkloadAPIServer(t *testing.T, kubeDir, dir, vip, serviceCIDR string, pki map[string][]byte) {
	t.Helper()
	pkiDir := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range workloadPKI {
		if err := os.WriteFile(filepath.Join(pkiDir, name), pki[name], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	svc, err := netip.ParsePrefix(serviceCIDR)
	if err != nil {
		t.Fatalf("service CIDR %q: %v", serviceCIDR, err)
	}
	crt, key, err := servingCert(pki["ca.crt"], pki["ca.key"], []net.IP{net.ParseIP(vip), net.IP(svc.Addr().Next().AsSlice()), net.ParseIP("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"apiserver.crt": crt, "apiserver.key": key} {
		if err := os.WriteFile(filepath.Join(pkiDir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	addrs, err := framework.FreeAddrs(2)
	if err != nil {
		t.Fatal(err)
	}
	etcdAddr, peerAddr := addrs[0], addrs[1]
	startProcess(t, dir, "etcd", filepath.Join(kubeDir, "etcd"),
		"--name", "workload", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", "http://"+etcdAddr, "--advertise-client-urls", "http://"+etcdAddr,
		"--listen-peer-urls", "http://"+peerAddr, "--initial-advertise-peer-urls", "http://"+peerAddr,
		"--initial-cluster", "workload=http://"+peerAddr, "--unsafe-no-fsync")
	waitHTTP(t, dir, "etcd", "http://"+etcdAddr+"/health", nil)

	startProcess(t, dir, "kube-apiserver", filepath.Join(kubeDir, "kube-apiserver"),
		"--etcd-servers", "http://"+etcdAddr,
		"--bind-address", vip, "--advertise-address", vip, "--secure-port", strconv.Itoa(controlPlanePort),
		"--cert-dir", filepath.Join(dir, "apiserver"),
		"--tls-cert-file", filepath.Join(pkiDir, "apiserver.crt"), "--tls-private-key-file", filepath.Join(pkiDir, "apiserver.key"),
		"--client-ca-file", filepath.Join(pkiDir, "ca.crt"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", filepath.Join(pkiDir, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(pkiDir, "sa.key"),
		"--service-cluster-ip-range", serviceCIDR,
		// No endpoints for the kubernetes Service: its address, on
		// loopback, is not a valid endpoint.
		"--endpoint-reconciler-type", "none",
		"--authorization-mode", "Node,RBAC", "--enable-bootstrap-token-auth", "--allow-privileged=true")
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pki["ca.crt"])
	waitHTTP(t, dir, "kube-apiserver", "https://"+net.JoinHostPort(vip, strconv.Itoa(controlPlanePort))+"/readyz",
		&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
}

// servingCert issues the API server's certificate from the cluster CA.
func servingCert(caCrt, caKey []byte, ips []net.IP) (crt, key []byte, err error) {
	ca, err := testenv.LoadCA(caCrt, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster %w", err)
	}
	return ca.Issue(testenv.CertSpec{
		CommonName: "kube-apiserver", Usage: x509.ExtKeyUsageServerAuth, IPs: ips,
		DNSNames: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	})
}

// startProcess runs a process of the test, logging to dir/NAME.log, in its
// own process group and killed with the test binary; it is stopped
// (SIGTERM, then SIGKILL) when the test ends, its log shown on failure.
func startProcess(t *testing.T, dir, name, bin string, args ...string) {
	t.Helper()
	logFile := filepath.Join(dir, name+".log")
	lf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("workload %s log:\n%s", name, framework.Tail(string(b), 20))
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
}

// waitHTTP waits up to a minute for url to answer 200.
func waitHTTP(t *testing.T, dir, name, url string, tlsConfig *tls.Config) {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig}}
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, name+".log"))
			t.Fatalf("workload %s not ready at %s: %v\n%s", name, url, err, framework.Tail(string(b), 30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// workloadClient is a client of the workload cluster built from the
// cluster's kubeconfig (the <cluster>-kubeconfig Secret of Cluster API).
func workloadClient(t *testing.T, kubeconfig []byte) client.Client {
	t.Helper()
	cfg, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	if err != nil {
		t.Fatalf("the cluster's kubeconfig: %v", err)
	}
	c, err := client.New(cfg, client.Options{Scheme: newScheme(t)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// kubeadmInitObjects writes what kubeadm init leaves in the cluster and
// Cluster API reads or joins rely on: kube-system/kubeadm-config with the
// ClusterConfiguration (its presence is how the kubeadm control plane
// provider tells that the control plane is initialized) and
// kube-public/cluster-info, the kubeconfig joining nodes discover the
// cluster from with their bootstrap token.
func kubeadmInitObjects(ctx context.Context, c client.Client, clusterConfiguration string, caCrt []byte, endpoint string) error {
	info := clientcmdapi.NewConfig()
	info.Clusters[""] = &clientcmdapi.Cluster{Server: "https://" + endpoint, CertificateAuthorityData: caCrt}
	kc, err := clientcmd.Write(*info)
	if err != nil {
		return err
	}
	for _, cm := range []*corev1.ConfigMap{
		{ObjectMeta: metav1.ObjectMeta{Namespace: metav1.NamespaceSystem, Name: "kubeadm-config"},
			Data: map[string]string{"ClusterConfiguration": clusterConfiguration}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: metav1.NamespacePublic, Name: "cluster-info"},
			Data: map[string]string{"kubeconfig": string(kc)}},
	} {
		if err := c.Create(ctx, cm); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s/%s: %w", cm.Namespace, cm.Name, err)
		}
	}
	return nil
}

// registerNode creates the Node a guest's kubelet registers: named by the
// guest's host name, with the provider ID its kubelet was given.
func registerNode(ctx context.Context, c client.Client, name, providerID string, controlPlane bool) error {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelHostname: name}},
		Spec:       corev1.NodeSpec{ProviderID: providerID},
	}
	if controlPlane {
		n.Labels["node-role.kubernetes.io/control-plane"] = ""
	}
	if err := c.Create(ctx, n); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("register node %s: %w", name, err)
	}
	return nil
}
