// Package testenv starts the real services flintlockd and CAPMVM depend on,
// privately, for tests and the demo: a containerd daemon on its own socket and
// root, a CNCF distribution registry on loopback, and a kube-apiserver with
// etcd (envtest) carrying the Cluster API CRDs.
package testenv
