package v1alpha1

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// kube is a real kube-apiserver with the CAPMVM CRDs and the webhook
// configurations of config/webhook installed, calling this package's
// webhooks served by a controller-runtime manager on loopback.
type kube struct {
	client.Client
	warnings *warningRecorder
}

// warningRecorder collects the API server's warning headers.
type warningRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warningRecorder) HandleWarningHeader(_ int, _ string, msg string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, msg)
}

// take returns and forgets the warnings seen so far.
func (w *warningRecorder) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.msgs
	w.msgs = nil
	return out
}

func startKube(t *testing.T) *kube {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		WebhookInstallOptions: envtest.WebhookInstallOptions{
			Paths: []string{filepath.Join(root, "config", "webhook", "manifests.yaml")},
		},
	}
	cfg := testenv.StartEnvtest(t, env)

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := infrav1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	wio := &env.WebhookInstallOptions
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		WebhookServer: webhook.NewServer(webhook.Options{
			Host:    wio.LocalServingHost,
			Port:    wio.LocalServingPort,
			CertDir: wio.LocalServingCertDir,
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	// Wait for the webhook server to serve.
	check := mgr.GetWebhookServer().StartedChecker()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := check(&http.Request{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhook server did not start: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	k := &kube{warnings: &warningRecorder{}}
	ccfg := rest.CopyConfig(cfg)
	ccfg.WarningHandler = k.warnings
	if k.Client, err = client.New(ccfg, client.Options{Scheme: scheme}); err != nil {
		t.Fatal(err)
	}
	return k
}

func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wantDenied checks that err is the API server relaying a denial by the
// named webhook with an Invalid status, and that its message holds every
// part of want.
func wantDenied(t *testing.T, err error, hook string, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("request accepted; want denied by %s with %q", hook, want)
	}
	msg := err.Error()
	if !strings.Contains(msg, `admission webhook "`+hook+`" denied the request`) {
		t.Fatalf("error %q is not a denial by %s", msg, hook)
	}
	if !apierrors.IsInvalid(err) {
		t.Errorf("error %q: reason %v, want Invalid", msg, apierrors.ReasonForError(err))
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not contain %q", msg, w)
		}
	}
}

func mustCreate(t *testing.T, k *kube, obj client.Object, opts ...client.CreateOption) {
	t.Helper()
	if err := k.Create(tctx(t), obj, opts...); err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

func objectMeta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: "default", Name: name}
}

// TestWebhookManifestsFresh regenerates config/webhook/manifests.yaml from
// the markers with the pinned controller-gen and compares.
func TestWebhookManifestsFresh(t *testing.T) {
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(root, "hack", "generate-crds.sh"), out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("generate: %v\n%s", err, b)
	}
	const rel = "config/webhook/manifests.yaml"
	want, err := os.ReadFile(filepath.Join(out, rel))
	if err != nil {
		t.Fatalf("%s not generated: %v", rel, err)
	}
	got, err := os.ReadFile(filepath.Join(root, rel))
	if errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s: generated but not committed; run make generate", rel)
	} else if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is stale; run make generate", rel)
	}
	// Each kind is registered under its plural resource.
	for _, r := range []string{"microvmclusters", "microvmclustertemplates", "microvmmachines", "microvmmachinetemplates"} {
		if !bytes.Contains(got, []byte("- "+r+"\n")) {
			t.Errorf("%s registers no webhook for resource %s", rel, r)
		}
	}
}
