package main

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/releaseutil"
)

// ciliumValues are the chart values the templates need; everything else is
// the chart's default.
var ciliumValues = map[string]any{
	// Pod addresses from each Node's podCIDR, which kube-controller-manager
	// carves out of the Cluster's clusterNetwork.pods (POD_CIDR).
	"ipam": map[string]any{"mode": "kubernetes"},
	// The seed's clusters have one control-plane node; the default of two
	// replicas with anti-affinity would leave one pending.
	"operator": map[string]any{"replicas": 1},
	// The default "helm" method generates Hubble's certificates at render
	// time, which makes the output differ on every run; the cronJob method
	// generates them in the cluster instead.
	"hubble": map[string]any{"tls": map[string]any{"auto": map[string]any{"method": "cronJob"}}},
}

// renderCilium renders cilium's Helm chart the way `helm template cilium
// --namespace kube-system` does, with ciliumValues: the chart's manifests
// in Helm's install order, then its install hooks.
func renderCilium() (string, error) {
	dir, err := moduleDir(ciliumModule, ciliumVersion)
	if err != nil {
		return "", err
	}
	chart, err := loader.Load(filepath.Join(dir, ciliumChart))
	if err != nil {
		return "", fmt.Errorf("loading the chart: %w", err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		return "", err
	}
	caps.KubeVersion = *kv
	values, err := chartutil.ToRenderValues(chart, ciliumValues, chartutil.ReleaseOptions{
		Name:      "cilium",
		Namespace: "kube-system",
		Revision:  1,
		IsInstall: true,
	}, caps)
	if err != nil {
		return "", fmt.Errorf("chart values: %w", err)
	}
	rendered, err := engine.Render(chart, values)
	if err != nil {
		return "", fmt.Errorf("rendering the chart: %w", err)
	}
	// Keep the YAML templates with content (not NOTES.txt, not templates
	// whose conditions left them empty).
	for name, content := range rendered {
		if !strings.HasSuffix(name, ".yaml") || strings.TrimSpace(content) == "" {
			delete(rendered, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(rendered, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return "", fmt.Errorf("sorting the manifests: %w", err)
	}
	var b strings.Builder
	for _, m := range manifests {
		writeDoc(&b, m.Name, m.Content)
	}
	// Install hooks run after the release's objects; a ClusterResourceSet
	// applies everything once, so they follow the manifests.
	for _, h := range hooks {
		if slices.Contains(h.Events, release.HookPostInstall) || slices.Contains(h.Events, release.HookPreInstall) {
			writeDoc(&b, h.Path, h.Manifest)
		}
	}
	return escapeEnvsubst(b.String()), nil
}

func writeDoc(b *strings.Builder, source, content string) {
	b.WriteString("---\n# Source: ")
	b.WriteString(source)
	b.WriteString("\n")
	b.WriteString(strings.TrimSpace(content))
	b.WriteString("\n")
}
