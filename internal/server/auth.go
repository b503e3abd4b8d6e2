package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"os"
	"strings"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TLSConfig returns a server TLS configuration (TLS 1.3 minimum) from PEM
// files. With clientCAFile set, clients must present a certificate signed
// by one of its CAs (mutual TLS).
func TLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s: %w", certFile, err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
	}
	if clientCAFile != "" {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("read client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client CA %s holds no PEM certificate: %w", clientCAFile, errdefs.ErrInvalidArgument)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// authenticator checks the basic-auth token of each call. A zero
// authenticator (no token) lets everything through.
type authenticator struct {
	// sum is the SHA-256 of the token: comparing fixed-size digests keeps
	// the comparison constant-time regardless of the length offered.
	sum     [sha256.Size]byte
	enabled bool
}

// Authenticate checks the call to method in ctx as a server with token
// does: "authorization: Basic base64(token)" required (the scheme word
// case-insensitive) unless token is empty or method is a health check.
// Fakes of flintlockd use it to authenticate the same way.
func Authenticate(ctx context.Context, method, token string) error {
	return newAuthenticator(token).check(ctx, method)
}

func newAuthenticator(token string) authenticator {
	if token == "" {
		return authenticator{}
	}
	return authenticator{sum: sha256.Sum256([]byte(token)), enabled: true}
}

// healthPrefix is exempt from authentication so that probes need no secret.
var healthPrefix = "/" + healthpb.Health_ServiceDesc.ServiceName + "/"

// check verifies "authorization: Basic base64(token)" in ctx's metadata;
// the scheme word is matched case-insensitively.
func (a authenticator) check(ctx context.Context, method string) error {
	if !a.enabled || strings.HasPrefix(method, healthPrefix) {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return status.Error(codes.Unauthenticated, "authorization required")
	}
	scheme, cred, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	if !ok || !strings.EqualFold(scheme, "basic") {
		return status.Error(codes.Unauthenticated, "authorization must use the Basic scheme")
	}
	token, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return status.Error(codes.Unauthenticated, "authorization is not base64")
	}
	sum := sha256.Sum256(token)
	if subtle.ConstantTimeCompare(sum[:], a.sum[:]) != 1 {
		return status.Error(codes.Unauthenticated, "invalid token")
	}
	return nil
}

func (a authenticator) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := a.check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (a authenticator) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := a.check(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return h(srv, ss)
}
