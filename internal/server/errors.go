package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// toStatus converts an internal error to a gRPC status error. It is called
// once per failed call, at the edge; an error that already is a status
// passes through unchanged.
func (s *Server) toStatus(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err
	}
	code := codeOf(err)
	if code == codes.Internal {
		s.log.ErrorContext(ctx, "internal error", "method", methodOf(ctx), "error", err)
	}
	return status.Error(code, err.Error())
}

// codeOf maps errdefs kinds to gRPC codes.
func codeOf(err error) codes.Code {
	switch {
	case errdefs.IsInvalidArgument(err):
		return codes.InvalidArgument
	case errdefs.IsNotFound(err):
		return codes.NotFound
	case errdefs.IsAlreadyExists(err):
		return codes.AlreadyExists
	case errdefs.IsFailedPrecondition(err):
		return codes.FailedPrecondition
	case errdefs.IsNotImplemented(err):
		return codes.Unimplemented
	case errdefs.IsResourceExhausted(err):
		return codes.ResourceExhausted
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	default:
		return codes.Internal
	}
}

func methodOf(ctx context.Context) string {
	m, _ := grpc.Method(ctx)
	return m
}

// recoverUnary turns a panic in a handler into an Internal error instead of
// killing the daemon.
func (s *Server) recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.ErrorContext(ctx, "panic in handler", "method", info.FullMethod, "panic", r)
			err = status.Error(codes.Internal, fmt.Sprintf("internal error in %s", info.FullMethod))
		}
	}()
	return h(ctx, req)
}

func (s *Server) recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.ErrorContext(ss.Context(), "panic in handler", "method", info.FullMethod, "panic", r)
			err = status.Error(codes.Internal, fmt.Sprintf("internal error in %s", info.FullMethod))
		}
	}()
	return h(srv, ss)
}
