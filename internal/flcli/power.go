package flcli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	powerv1 "github.com/liquidmetal-go/liquidmetal/api/services/power/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// power is the power service over the client's connection.
func (c *client) power() powerv1.PowerServiceClient { return powerv1.NewPowerServiceClient(c.conn) }

// powerCommands are start, stop, restart and watch.
func powerCommands(g *globals) []*cobra.Command {
	return []*cobra.Command{
		powerCommand(g, "start", "Start a stopped microVM again, with the same files"),
		powerCommand(g, "stop", "Stop a microVM's VMM (guest shutdown, then forced), keeping its files"),
		powerCommand(g, "restart", "Stop and start a running microVM"),
		watchCommand(g),
	}
}

func powerCommand(g *globals, op, short string) *cobra.Command {
	var (
		grace time.Duration
		wait  bool
	)
	cmd := &cobra.Command{
		Use:   op + " UID",
		Short: short,
		Args:  cobra.ExactArgs(1),
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
			var timeout *durationpb.Duration
			if cmd.Flags().Changed("grace") {
				timeout = durationpb.New(grace)
			}
			uid := args[0]
			var vm *types.MicroVM
			switch op {
			case "start":
				resp, err := c.power().StartMicroVM(ctx, &powerv1.StartMicroVMRequest{Uid: uid})
				if err != nil {
					return rpcError(op+" "+uid, err)
				}
				vm = resp.GetMicrovm()
			case "stop":
				resp, err := c.power().StopMicroVM(ctx, &powerv1.StopMicroVMRequest{Uid: uid, Timeout: timeout})
				if err != nil {
					return rpcError(op+" "+uid, err)
				}
				vm = resp.GetMicrovm()
			default:
				resp, err := c.power().RestartMicroVM(ctx, &powerv1.RestartMicroVMRequest{Uid: uid, Timeout: timeout})
				if err != nil {
					return rpcError(op+" "+uid, err)
				}
				vm = resp.GetMicrovm()
			}
			if !wait {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s requested\n", uid, op)
				return nil
			}
			return g.waitPower(ctx, c, vm, op, cmd.OutOrStdout())
		},
	}
	if op != "start" {
		cmd.Flags().DurationVar(&grace, "grace", 0, "time the guest gets to power off before the VMM is ended by force (default: the daemon's)")
	}
	cmd.Flags().BoolVar(&wait, "wait", true, "wait until the microVM is "+map[string]string{"start": "running", "stop": "stopped", "restart": "running again"}[op])
	return cmd
}

// waitPower polls the microVM until the power operation op asked in vm is
// done, and prints its state.
func (g *globals) waitPower(ctx context.Context, c *client, vm *types.MicroVM, op string, out io.Writer) error {
	uid := vm.GetSpec().GetUid()
	want := types.MicroVMStatus_RUNNING
	if op == "stop" {
		want = types.MicroVMStatus_STOPPED
	}
	gen := vm.GetSpec().GetPower().GetRestartGeneration()
	for {
		resp, err := c.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: uid})
		if err != nil {
			return rpcError("get "+uid, err)
		}
		st := resp.GetMicrovm().GetStatus()
		switch {
		case st.GetState() == types.MicroVMStatus_FAILED:
			return fmt.Errorf("%s: FAILED: %s: %s", uid, st.GetFailureReason(), st.GetFailureMessage())
		case st.GetDetailedState() == want && (op != "restart" || st.GetRestartGeneration() >= gen):
			fmt.Fprintf(out, "%s %s\n", uid, want)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: still %s: %w", uid, st.GetDetailedState(), ctx.Err())
		case <-time.After(g.pollInterval):
		}
	}
}

func watchCommand(g *globals) *cobra.Command {
	var namespace string
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print microVMs' state changes as they happen",
		Long: `Print the state of every microVM, then a line for each change of a
microVM's state (PENDING, RUNNING, STOPPED, FAILED, DELETING), its creation
and its removal, until Ctrl-C or --timeout.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := g.withTimeout(cmd.Context(), -1)
			defer cancel()
			s, err := c.power().WatchMicroVMs(ctx, &powerv1.WatchMicroVMsRequest{Namespace: namespace})
			if err != nil {
				return rpcError("watch", err)
			}
			out := cmd.OutOrStdout()
			for {
				ev, err := s.Recv()
				if err != nil {
					if ctx.Err() != nil {
						return nil // Ctrl-C or --timeout
					}
					return rpcError("watch", err)
				}
				fmt.Fprintln(out, watchLine(ev))
			}
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "only this namespace")
	return cmd
}

// watchLine is one event as text: time, event, namespace/name, uid, the
// state change and the record version.
func watchLine(ev *powerv1.WatchMicroVMsResponse) string {
	ts := ev.GetTime().AsTime().Local().Format(time.RFC3339)
	if ev.GetType() == powerv1.WatchMicroVMsResponse_SYNCED {
		return ts + " SYNCED"
	}
	line := fmt.Sprintf("%s %s %s/%s %s ", ts, ev.GetType(), ev.GetNamespace(), ev.GetName(), ev.GetUid())
	switch ev.GetType() {
	case powerv1.WatchMicroVMsResponse_CHANGED:
		line += ev.GetOldState().String() + " -> " + ev.GetNewState().String()
	default:
		line += ev.GetNewState().String()
	}
	line += fmt.Sprintf(" v%d", ev.GetVersion())
	if r := ev.GetFailureReason(); r != "" {
		line += " (" + r + ")"
	}
	return line
}
