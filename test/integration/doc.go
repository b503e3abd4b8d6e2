// Package integration holds the whole-system test of CAPMVM: a Cluster API
// management cluster of local processes (hack/mgmt.sh), two real flintlockd
// hosts booting QEMU microVMs, the clusterctl artifacts of
// hack/release-artifacts.sh and the seed's `clusterctl generate cluster
// --flavor cilium`, applied with kubectl. The test follows one cluster from
// apply to deletion: placement by role, each guest booting with its own
// bootstrap data, and every microVM gone after the Cluster is deleted.
//
// The busybox test guest cannot run Kubernetes under TCG, so the test
// stands in for kubeadm and the kubelet inside the guests: with the
// certificates the control-plane guest received it starts a real
// kube-apiserver (and etcd) on the control-plane endpoint and writes what
// kubeadm init would (the kubeadm-config and cluster-info ConfigMaps), and
// it registers each guest's Node with the provider ID its kubelet would
// build from the guest's meta-data.
package integration
