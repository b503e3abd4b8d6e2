// Command cni generates the CNI manifests that the CAPMVM cluster templates
// install through ClusterResourceSets, from the CNI projects' own published
// sources fetched through the Go module proxy (cilium's Helm chart, rendered
// with the Helm library; flannel's kube-flannel.yml), and writes the
// cluster templates of templates/ from their sources in templates/src with
// those manifests embedded.
//
// It lives in its own module so that Helm and its Kubernetes libraries stay
// out of the project's go.mod. Run it from this folder:
//
//	go run . -root ../..             # rewrite <root>/templates
//	go run . -root ../.. -out DIR    # write the templates to DIR instead
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
)

// The CNI releases the templates install. The Go module proxy serves both
// repositories with their install files.
const (
	ciliumModule  = "github.com/cilium/cilium"
	ciliumVersion = "v1.18.4"
	ciliumChart   = "install/kubernetes/cilium"

	flannelModule   = "github.com/flannel-io/flannel"
	flannelVersion  = "v0.28.10"
	flannelManifest = "Documentation/kube-flannel.yml"
)

// kubeVersion is the Kubernetes version the cilium chart is rendered for
// (its Capabilities.KubeVersion); the templates default to the same minor.
const kubeVersion = "v1.34.4"

func main() {
	root := flag.String("root", "../..", "the repository root (holds templates/src)")
	out := flag.String("out", "", "folder to write the templates to (default <root>/templates)")
	flag.Parse()
	if *out == "" {
		*out = filepath.Join(*root, "templates")
	}
	if err := run(*root, *out); err != nil {
		slog.Error("generating the cluster templates", "err", err)
		os.Exit(1)
	}
}

func run(root, out string) error {
	cilium, err := renderCilium()
	if err != nil {
		return fmt.Errorf("cilium %s: %w", ciliumVersion, err)
	}
	flannel, err := flannelManifestWithPodCIDR()
	if err != nil {
		return fmt.Errorf("flannel %s: %w", flannelVersion, err)
	}
	files, err := renderTemplates(filepath.Join(root, "templates", "src"), map[string]string{
		"cilium":  cilium,
		"flannel": flannel,
	})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(out, f.name), f.data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
