// Package flcli is the `fl` command line client of flintlockd: its cobra
// commands, the gRPC connection they share (TLS by default, optional token
// and client certificate), building a MicroVMSpec from flags or a spec file,
// and printing microVMs as tables, JSON or YAML.
package flcli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
)

// Environment variables read when the matching flag is not given.
const (
	EnvAddress = "FL_ADDRESS"
	EnvToken   = "FL_TOKEN"
)

// DefaultAddress is flintlockd's default gRPC endpoint.
const DefaultAddress = "127.0.0.1:9090"

// Default time limits of commands when --timeout is 0.
const (
	defaultTimeout     = 30 * time.Second
	defaultWaitTimeout = 10 * time.Minute
)

// globals are the flags every command shares.
type globals struct {
	address  string
	token    string
	tlsCA    string
	tlsCert  string
	tlsKey   string
	insecure bool
	timeout  time.Duration

	// pollInterval is how often wait, delete --wait and console -f look
	// at the VM; tests shorten it.
	pollInterval time.Duration
}

// NewRootCommand returns the `fl` command tree.
func NewRootCommand() *cobra.Command {
	return newRootCommand(&globals{pollInterval: time.Second})
}

func newRootCommand(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "fl",
		Short: "fl talks to flintlockd to create, inspect and delete microVMs",
		Long: `fl talks to flintlockd to create, inspect and delete microVMs.

The connection uses TLS unless --insecure is given. The address and token
can also come from the ` + EnvAddress + ` and ` + EnvToken + ` environment variables.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.address, "address", DefaultAddress, "flintlockd gRPC address (host:port or unix:///path; env "+EnvAddress+")")
	pf.StringVar(&g.token, "token", "", "authentication token, sent as 'authorization: Basic base64(token)' (env "+EnvToken+")")
	pf.StringVar(&g.tlsCA, "tls-ca", "", "PEM file of the CA that signed the server certificate (default: system roots)")
	pf.StringVar(&g.tlsCert, "tls-cert", "", "PEM client certificate for mutual TLS")
	pf.StringVar(&g.tlsKey, "tls-key", "", "PEM key of --tls-cert")
	pf.BoolVar(&g.insecure, "insecure", false, "connect in plain text, without TLS")
	pf.DurationVar(&g.timeout, "timeout", 0, "time limit for the whole command; 0 means 30s, 10m for waiting, none for console -f")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if !cmd.Flags().Changed("address") {
			if v := os.Getenv(EnvAddress); v != "" {
				g.address = v
			}
		}
		if !cmd.Flags().Changed("token") {
			g.token = os.Getenv(EnvToken)
		}
		return nil
	}

	mv := &cobra.Command{
		Use:     "microvm",
		Aliases: []string{"microvms", "mvm", "vm"},
		Short:   "Manage microVMs",
	}
	mv.AddCommand(microVMCommands(g)...)
	root.AddCommand(mv)
	// The short forms: fl create, fl get, fl list, ...
	root.AddCommand(microVMCommands(g)...)
	root.AddCommand(imageCommand(g))
	return root
}

// microVMCommands builds a fresh set of the microvm subcommands.
func microVMCommands(g *globals) []*cobra.Command {
	return append([]*cobra.Command{
		createCommand(g), getCommand(g), listCommand(g),
		deleteCommand(g), waitCommand(g), consoleCommand(g),
	}, powerCommands(g)...)
}

// client is an open connection to flintlockd.
type client struct {
	v1alpha1.MicroVMClient
	conn *grpc.ClientConn
}

func (c *client) Close() error { return c.conn.Close() }

// dial opens the connection the global flags describe. The connection is
// lazy: errors reaching the server show up on the first call.
func (g *globals) dial() (*client, error) {
	var creds credentials.TransportCredentials
	if g.insecure {
		if g.tlsCA != "" || g.tlsCert != "" || g.tlsKey != "" {
			return nil, errors.New("--insecure cannot be combined with --tls-ca, --tls-cert or --tls-key")
		}
		creds = insecure.NewCredentials()
	} else {
		cfg, err := g.tlsConfig()
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(cfg)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if g.token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(basicToken{token: g.token, secure: !g.insecure}))
	}
	conn, err := grpc.NewClient(g.address, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", g.address, err)
	}
	return &client{MicroVMClient: v1alpha1.NewMicroVMClient(conn), conn: conn}, nil
}

func (g *globals) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	if g.tlsCA != "" {
		pem, err := os.ReadFile(g.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("reading --tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-ca %s holds no PEM certificate", g.tlsCA)
		}
		cfg.RootCAs = pool
	}
	if (g.tlsCert == "") != (g.tlsKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if g.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(g.tlsCert, g.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("loading client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// withTimeout bounds a command by --timeout, or by def when it is 0
// (def 0: no bound).
func (g *globals) withTimeout(ctx context.Context, def time.Duration) (context.Context, context.CancelFunc) {
	d := g.timeout
	if d == 0 {
		d = def
	}
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// basicToken sends the token the way flintlock clients always have.
type basicToken struct {
	token  string
	secure bool
}

func (b basicToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{
		"authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(b.token)),
	}, nil
}

// RequireTransportSecurity: with --insecure the user chose plain text.
func (b basicToken) RequireTransportSecurity() bool { return b.secure }

// rpcError turns a gRPC status into "<Code>: <message>" for people.
func rpcError(what string, err error) error {
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("%s: %s: %s", what, st.Code(), st.Message())
	}
	return fmt.Errorf("%s: %w", what, err)
}
