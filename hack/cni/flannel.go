package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// flannelDefaultNetwork is the pod network kube-flannel.yml ships with.
const flannelDefaultNetwork = `"Network": "10.244.0.0/16"`

// flannelManifestWithPodCIDR returns flannel's published kube-flannel.yml
// with its pod network replaced by the template's POD_CIDR variable, so
// that flannel and the Cluster's clusterNetwork.pods always agree.
func flannelManifestWithPodCIDR() (string, error) {
	dir, err := moduleDir(flannelModule, flannelVersion)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(dir, flannelManifest))
	if err != nil {
		return "", err
	}
	m := string(b)
	if strings.Count(m, flannelDefaultNetwork) != 1 {
		return "", fmt.Errorf("%s does not hold exactly one %s", flannelManifest, flannelDefaultNetwork)
	}
	// Escape first: the manifest's own "$" must reach the cluster as is.
	m = escapeEnvsubst(m)
	return strings.Replace(m, flannelDefaultNetwork, `"Network": "${POD_CIDR:=10.244.0.0/16}"`, 1), nil
}
