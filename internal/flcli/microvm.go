package flcli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

func addOutputFlag(cmd *cobra.Command, format *string) {
	cmd.Flags().StringVarP(format, "output", "o", formatTable, "output format: table, json or yaml")
}

func createCommand(g *globals) *cobra.Command {
	var (
		sf     specFlags
		format string
		wait   bool
	)
	cmd := &cobra.Command{
		Use:   "create [flags]",
		Short: "Create a microVM from flags or a spec file",
		Example: `  fl microvm create --name web --kernel-image myorg/kernel:6.1 \
    --root-image myorg/ubuntu:22.04 --interface tap:eth0 \
    --user-data-file cloud-config.yaml
  fl microvm create -f spec.yaml --namespace staging`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			spec, err := sf.build(cmd.Flags(), func() ([]byte, error) { return io.ReadAll(cmd.InOrStdin()) })
			if err != nil {
				return err
			}
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := g.withTimeout(cmd.Context(), defaultTimeout)
			defer cancel()
			resp, err := c.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec})
			if err != nil {
				return rpcError("create", err)
			}
			if err := printVMs(cmd.OutOrStdout(), format, true, resp.GetMicrovm()); err != nil {
				return err
			}
			if !wait {
				return nil
			}
			cancel()
			ctx, cancel = g.withTimeout(cmd.Context(), defaultWaitTimeout)
			defer cancel()
			return g.waitFor(ctx, c, resp.GetMicrovm().GetSpec().GetUid(), waitCreated, cmd.ErrOrStderr())
		},
	}
	sf.register(cmd.Flags())
	addOutputFlag(cmd, &format)
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the microVM is CREATED (progress on stderr)")
	return cmd
}

func getCommand(g *globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "get UID",
		Short: "Show a microVM",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := g.withTimeout(cmd.Context(), defaultTimeout)
			defer cancel()
			resp, err := c.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: args[0]})
			if err != nil {
				return rpcError("get "+args[0], err)
			}
			return printVMs(cmd.OutOrStdout(), format, true, resp.GetMicrovm())
		},
	}
	addOutputFlag(cmd, &format)
	return cmd
}

func listCommand(g *globals) *cobra.Command {
	var format, namespace, name, selector string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List microVMs",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := g.withTimeout(cmd.Context(), defaultTimeout)
			defer cancel()
			req := &v1alpha1.ListMicroVMsRequest{Namespace: namespace, LabelSelector: selector}
			if cmd.Flags().Changed("name") {
				req.Name = proto.String(name)
			}
			resp, err := c.ListMicroVMs(ctx, req)
			if err != nil {
				return rpcError("list", err)
			}
			return printVMs(cmd.OutOrStdout(), format, false, resp.GetMicrovm()...)
		},
	}
	cmd.Flags().StringVar(&namespace, "namespace", "", "only this namespace (default: all)")
	cmd.Flags().StringVar(&name, "name", "", "only microVMs with this name")
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "label selector, e.g. role=worker,tier!=db")
	addOutputFlag(cmd, &format)
	return cmd
}

func deleteCommand(g *globals) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:     "delete UID",
		Aliases: []string{"rm"},
		Short:   "Delete a microVM",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			def := defaultTimeout
			if wait {
				def = defaultWaitTimeout
			}
			ctx, cancel := g.withTimeout(cmd.Context(), def)
			defer cancel()
			if _, err := c.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: args[0]}); err != nil {
				return rpcError("delete "+args[0], err)
			}
			if !wait {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: deleting\n", args[0])
				return nil
			}
			return g.waitFor(ctx, c, args[0], waitDeleted, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the microVM is gone")
	return cmd
}

// Targets of wait.
const (
	waitCreated = "created"
	waitDeleted = "deleted"
)

func waitCommand(g *globals) *cobra.Command {
	var target string
	cmd := &cobra.Command{
		Use:   "wait UID",
		Short: "Wait until a microVM is created (or deleted), showing its progress",
		Long: `Wait until a microVM is created (or deleted), printing a line each time its
state changes. Waiting for "created" fails when the microVM ends FAILED, with
the failure reason. The time limit is --timeout (default 10m).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if target != waitCreated && target != waitDeleted {
				return fmt.Errorf("--for %q: want created or deleted", target)
			}
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := g.withTimeout(cmd.Context(), defaultWaitTimeout)
			defer cancel()
			return g.waitFor(ctx, c, args[0], target, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&target, "for", waitCreated, "what to wait for: created or deleted")
	return cmd
}

// waitFor polls the microVM until it reaches target, printing a line to
// out whenever what it shows changes.
func (g *globals) waitFor(ctx context.Context, c *client, uid, target string, out io.Writer) error {
	last, lastState := "", "unknown"
	for {
		resp, err := c.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: uid})
		switch code := status.Code(err); {
		case err == nil:
			vm := resp.GetMicrovm()
			st := vm.GetStatus()
			lastState = st.GetState().String()
			line := stateText(vm)
			if st.GetRetry() > 0 && st.GetState() != types.MicroVMStatus_FAILED {
				line += fmt.Sprintf(" retry %d", st.GetRetry())
				if st.GetFailureMessage() != "" {
					line += ": " + st.GetFailureMessage()
				}
			}
			if line != last {
				fmt.Fprintf(out, "%s %s: %s\n", time.Now().Format(time.TimeOnly), vmName(vm), line)
				last = line
			}
			if target == waitCreated {
				switch st.GetState() {
				case types.MicroVMStatus_CREATED:
					return nil
				case types.MicroVMStatus_FAILED:
					return fmt.Errorf("microVM %s failed: %s", vmName(vm), failureText(st))
				}
			}
		case code == codes.NotFound && target == waitDeleted:
			fmt.Fprintf(out, "%s %s: deleted\n", time.Now().Format(time.TimeOnly), uid)
			return nil
		case ctx.Err() != nil || code == codes.DeadlineExceeded || code == codes.Canceled:
			// The deadline can reach the server before ctx notices it.
			return waitEnded(ctx, uid, target, lastState)
		case code == codes.Unavailable:
			// The daemon may be restarting: keep trying until the deadline.
			if last != "unavailable" {
				fmt.Fprintf(out, "%s %s: daemon unavailable, retrying\n", time.Now().Format(time.TimeOnly), uid)
				last = "unavailable"
			}
		default:
			return rpcError("get "+uid, err)
		}
		select {
		case <-ctx.Done():
			return waitEnded(ctx, uid, target, lastState)
		case <-time.After(g.pollInterval):
		}
	}
}

// waitEnded is the error of a wait cut short by its deadline or Ctrl-C.
func waitEnded(ctx context.Context, uid, target, lastState string) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("stopped waiting for %s to be %s (last state %s)", uid, target, lastState)
	}
	return fmt.Errorf("timed out waiting for %s to be %s (last state %s)", uid, target, lastState)
}

func failureText(st *types.MicroVMStatus) string {
	switch r, m := st.GetFailureReason(), st.GetFailureMessage(); {
	case r != "" && m != "":
		return r + ": " + m
	case r != "":
		return r
	case m != "":
		return m
	}
	return "no reason given"
}
