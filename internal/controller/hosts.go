package controller

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	hostv1 "github.com/liquidmetal-go/liquidmetal/api/services/host/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/internal/hostclient"
	"github.com/liquidmetal-go/liquidmetal/internal/placement"
)

// Keys of the Secret named by a MicrovmCluster's tlsSecretRef.
const (
	TLSCertKey = "tls.crt"
	TLSKeyKey  = "tls.key"
	TLSCAKey   = "ca.crt"
)

// hostPool returns the cluster's pool of hosts, static or dynamic.
func hostPool(mc *infrav1.MicrovmCluster) *infrav1.HostPool {
	if mc == nil {
		return nil
	}
	if p := mc.Spec.Placement.StaticPool; p != nil {
		return p
	}
	return mc.Spec.Placement.DynamicPool
}

// credentials reads how to reach host for the cluster: the CONNECT proxy,
// the mutual TLS material of tlsSecretRef and the host's token from
// basicAuthSecret (keyed by the host address without its port). A nil
// cluster gives plaintext without a token.
func credentials(ctx context.Context, c client.Reader, mc *infrav1.MicrovmCluster, host string) (hostclient.Credentials, error) {
	var creds hostclient.Credentials
	if mc == nil {
		return creds, nil
	}
	if p := mc.Spec.MicrovmProxy; p != nil {
		creds.Proxy = p.Endpoint
	}
	if name := mc.Spec.TLSSecretRef; name != "" {
		s, err := secret(ctx, c, mc.Namespace, name)
		if err != nil {
			return creds, fmt.Errorf("tlsSecretRef: %w", err)
		}
		creds.CACert, creds.Cert, creds.Key = s.Data[TLSCAKey], s.Data[TLSCertKey], s.Data[TLSKeyKey]
		if len(creds.Cert) == 0 != (len(creds.Key) == 0) {
			return creds, fmt.Errorf("tlsSecretRef: secret %s/%s has only one of %s and %s: %w",
				mc.Namespace, name, TLSCertKey, TLSKeyKey, errdefs.ErrInvalidArgument)
		}
	}
	if p := hostPool(mc); p != nil && p.BasicAuthSecret != "" {
		s, err := secret(ctx, c, mc.Namespace, p.BasicAuthSecret)
		if err != nil {
			return creds, fmt.Errorf("basicAuthSecret: %w", err)
		}
		addr := host
		if h, _, err := net.SplitHostPort(host); err == nil {
			addr = h
		}
		creds.Token = string(s.Data[addr])
	}
	return creds, nil
}

func secret(ctx context.Context, c client.Reader, namespace, name string) (*corev1.Secret, error) {
	s := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, s); err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", namespace, name, err)
	}
	return s, nil
}

// unreachable reports whether a gRPC error means the host could not be
// talked to (down, unreachable, refusing our credentials), as opposed to
// an answer.
func unreachable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Unauthenticated, codes.PermissionDenied, codes.Canceled:
		return true
	}
	return false
}

// capacityReader reads hosts' free capacity through the host service, with
// the cluster's credentials.
type capacityReader struct {
	r  *MicrovmMachineReconciler
	c  client.Reader
	mc *infrav1.MicrovmCluster
}

func (cr capacityReader) Capacity(ctx context.Context, host string) (placement.Capacity, error) {
	creds, err := credentials(ctx, cr.c, cr.mc, host)
	if err != nil {
		return placement.Capacity{}, err
	}
	hc, err := cr.r.Hosts.Host(host, creds)
	if err != nil {
		return placement.Capacity{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, cr.r.rpcTimeout())
	defer cancel()
	resp, err := hc.GetCapacity(ctx, &hostv1.GetCapacityRequest{})
	if err != nil {
		return placement.Capacity{}, fmt.Errorf("capacity: %w", err)
	}
	return placement.Capacity{
		FreeVCPU:      int64(resp.GetFreeVcpu()),
		FreeMemoryMiB: int64(resp.GetFreeMemoryMib()),
		MicroVMs:      int(resp.GetMicrovmCount()),
	}, nil
}

// dialEndpoint reports whether a TCP connection to addr opens in timeout.
func dialEndpoint(ctx context.Context, addr string, timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return conn.Close()
}
