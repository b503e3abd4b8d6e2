package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/liquidmetal-go/liquidmetal/internal/hostnet"
)

// newHostCommand is "flintlockd host": set-up of the host flintlockd runs on.
func newHostCommand() *cobra.Command {
	host := &cobra.Command{
		Use:   "host",
		Short: "Set up the host flintlockd runs on",
	}
	host.AddCommand(newHostNetworkCommand())
	return host
}

// newHostNetworkCommand is "flintlockd host network apply|teardown".
func newHostNetworkCommand() *cobra.Command {
	var (
		configFile string
		dryRun     bool
		dnsmasq    string
	)
	netCmd := &cobra.Command{
		Use:   "network",
		Short: "Set up or remove the VM network of this host (bridge, uplink, DHCP, NAT, filters)",
		Long: `Sets up, from a YAML config, the VM network of this host: a VLAN interface
on the parent NIC, the bridge the VMs' TAP devices attach to and this host's
address on it, dnsmasq serving DHCP for the VM subnet (with static leases and a
reserved VIP range that is never leased), and the nftables table "inet
liquidmetal" (masquerade for VM egress; VMs kept from the management ports).

apply is idempotent: run again, it changes nothing. teardown removes exactly
what apply created, as recorded in the config's state folder.`,
	}
	netCmd.PersistentFlags().StringVar(&configFile, "config", "", "host network config file (YAML; required)")
	netCmd.PersistentFlags().BoolVar(&dryRun, "dry-run", false, "print the steps without changing anything")
	netCmd.PersistentFlags().StringVar(&dnsmasq, "dnsmasq-binary", "dnsmasq", "dnsmasq binary (Debian package dnsmasq-base)")

	run := func(name string, fn func(cmd *cobra.Command, c *hostnet.Config, o hostnet.Options) (*hostnet.Result, error)) *cobra.Command {
		return &cobra.Command{
			Use:  name,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if configFile == "" {
					return errors.New("--config is required")
				}
				c, err := hostnet.LoadConfig(configFile)
				if err != nil {
					return err
				}
				log := slog.New(slog.NewTextHandler(io.Discard, nil))
				res, err := fn(cmd, c, hostnet.Options{DryRun: dryRun, Dnsmasq: dnsmasq, Logger: log})
				printSteps(cmd.OutOrStdout(), res, dryRun)
				return err
			},
		}
	}
	apply := run("apply", func(cmd *cobra.Command, c *hostnet.Config, o hostnet.Options) (*hostnet.Result, error) {
		return hostnet.Apply(cmd.Context(), c, o)
	})
	apply.Short = "Create or update the host network to match the config"
	teardown := run("teardown", func(cmd *cobra.Command, c *hostnet.Config, o hostnet.Options) (*hostnet.Result, error) {
		return hostnet.Teardown(cmd.Context(), c, o)
	})
	teardown.Short = "Remove what apply created"
	netCmd.AddCommand(apply, teardown)
	return netCmd
}

func printSteps(w io.Writer, res *hostnet.Result, dryRun bool) {
	if res == nil {
		return
	}
	if len(res.Steps) == 0 {
		fmt.Fprintln(w, "nothing to do")
		return
	}
	prefix := ""
	if dryRun {
		prefix = "would "
	}
	for _, s := range res.Steps {
		fmt.Fprintln(w, prefix+s)
	}
}
