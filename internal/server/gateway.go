package server

import (
	"context"
	"fmt"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	hostv1 "github.com/liquidmetal-go/liquidmetal/api/services/host/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
)

// Gateway returns the HTTP/JSON gateway of the MicroVM and host services:
//
//	POST   /v1alpha1/microvm             body: the MicroVMSpec
//	GET    /v1alpha1/microvm/{uid}
//	DELETE /v1alpha1/microvm/{uid}
//	GET    /v1alpha1/microvms[/{namespace}]?name=&label_selector=
//	GET    /v1alpha1/host/capacity
//	POST   /v1alpha1/microvm/{uid}/start|stop|restart  body: {"timeout": "30s"}
//	GET    /v1alpha1/watch/microvms?namespace=          (streamed)
//	GET    /v1alpha1/microvm/{uid}/console?offset=&max_bytes=
//	GET    /v1alpha1/microvm/{uid}/console/stream?offset=&follow=  (streamed)
//
// Streamed routes answer with one JSON object per line ({"result": ...}).
//
// JSON is grpc-gateway's default, as upstream flintlock serves it: field
// names in lowerCamelCase (protojson), unpopulated fields included; requests
// may use either camelCase or the proto field names.
//
// Calls go to this Server in process through the same interceptors as gRPC
// (metrics, the token check, panic recovery), so the same Authorization
// header is required. Serve it with the gRPC listener's TLS configuration
// (http.Server{TLSConfig: TLSConfig(...)}) so the same TLS rules apply.
// Bodies over the configured maximum get 413.
func (s *Server) Gateway() (http.Handler, error) {
	mux := runtime.NewServeMux()
	if err := v1alpha1.RegisterMicroVMHandlerServer(context.Background(), mux, gatewayService{s: s}); err != nil {
		return nil, fmt.Errorf("register gateway: %w", err)
	}
	if err := hostv1.RegisterHostServiceHandlerServer(context.Background(), mux, hostGateway{h: s.host}); err != nil {
		return nil, fmt.Errorf("register host gateway: %w", err)
	}
	if s.powerGW == nil {
		gw, err := s.registerPowerGateway(context.Background(), mux)
		if err != nil {
			return nil, err
		}
		s.powerGW = gw
	}
	limit := int64(s.maxRecv)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > limit {
			_, outbound := runtime.MarshalerForRequest(mux, r)
			st := status.Newf(codes.ResourceExhausted, "request body of %d bytes is over the limit of %d", r.ContentLength, limit)
			body, err := outbound.Marshal(st.Proto())
			if err != nil {
				http.Error(w, st.Message(), http.StatusRequestEntityTooLarge)
				return
			}
			w.Header().Set("Content-Type", outbound.ContentType(st.Proto()))
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			_, _ = w.Write(body)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		mux.ServeHTTP(w, r)
	}), nil
}

// gatewayService runs gateway calls through the server's unary
// interceptor chain, as a gRPC call would be.
type gatewayService struct {
	v1alpha1.UnimplementedMicroVMServer
	s *Server
}

func (g gatewayService) CreateMicroVM(ctx context.Context, req *v1alpha1.CreateMicroVMRequest) (*v1alpha1.CreateMicroVMResponse, error) {
	return invoke(g.s, ctx, v1alpha1.MicroVM_CreateMicroVM_FullMethodName, req, g.s.CreateMicroVM)
}

func (g gatewayService) DeleteMicroVM(ctx context.Context, req *v1alpha1.DeleteMicroVMRequest) (*emptypb.Empty, error) {
	return invoke(g.s, ctx, v1alpha1.MicroVM_DeleteMicroVM_FullMethodName, req, g.s.DeleteMicroVM)
}

func (g gatewayService) GetMicroVM(ctx context.Context, req *v1alpha1.GetMicroVMRequest) (*v1alpha1.GetMicroVMResponse, error) {
	return invoke(g.s, ctx, v1alpha1.MicroVM_GetMicroVM_FullMethodName, req, g.s.GetMicroVM)
}

func (g gatewayService) ListMicroVMs(ctx context.Context, req *v1alpha1.ListMicroVMsRequest) (*v1alpha1.ListMicroVMsResponse, error) {
	return invoke(g.s, ctx, v1alpha1.MicroVM_ListMicroVMs_FullMethodName, req, g.s.ListMicroVMs)
}

// invoke calls h(ctx, req) through the server's unary interceptors.
func invoke[Req, Resp any](s *Server, ctx context.Context, method string, req Req, h func(context.Context, Req) (Resp, error)) (Resp, error) {
	info := &grpc.UnaryServerInfo{Server: s, FullMethod: method}
	var handler grpc.UnaryHandler = func(ctx context.Context, req any) (any, error) {
		return h(ctx, req.(Req))
	}
	for i := len(s.unary) - 1; i >= 0; i-- {
		ic, next := s.unary[i], handler
		handler = func(ctx context.Context, req any) (any, error) {
			return ic(ctx, req, info, next)
		}
	}
	resp, err := handler(ctx, req)
	if err != nil {
		var zero Resp
		return zero, err
	}
	return resp.(Resp), nil
}
