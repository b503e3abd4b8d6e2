// Package testenv starts the real services flintlockd depends on, privately,
// for tests and the demo: a containerd daemon on its own socket and root, and
// a CNCF distribution registry on loopback.
package testenv
