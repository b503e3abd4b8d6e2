// Command mgmt is hack/mgmt.sh's helper for the local management cluster:
// it makes the cluster's certificates and rewrites the Cluster API
// providers' CRDs and webhook configurations so that the API server calls
// webhook servers running as local processes on loopback.
//
//	mgmt certs DIR
//	mgmt webhooks -ca FILE -url https://127.0.0.1:PORT [-crds] FILE...
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "certs":
		if len(os.Args) != 3 {
			usage()
		}
		err = writeCerts(os.Args[2])
	case "webhooks":
		fs := flag.NewFlagSet("webhooks", flag.ExitOnError)
		ca := fs.String("ca", "", "PEM file of the CA that signed the webhook servers' certificate")
		url := fs.String("url", "", "base URL of the webhook server, https://127.0.0.1:PORT")
		crds := fs.Bool("crds", false, "also keep CustomResourceDefinitions (their conversion webhooks rewritten)")
		_ = fs.Parse(os.Args[2:])
		if *ca == "" || *url == "" || fs.NArg() == 0 {
			usage()
		}
		err = rewriteWebhooks(os.Stdout, *ca, *url, *crds, fs.Args())
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mgmt:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: mgmt certs DIR | mgmt webhooks -ca FILE -url URL [-crds] FILE...")
	os.Exit(2)
}
