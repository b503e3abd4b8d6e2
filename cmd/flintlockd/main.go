// Command flintlockd is the Liquid Metal microVM service: it serves the
// flintlock v1alpha1 API and runs each microVM as a VMM process on this host.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "flintlockd:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "flintlockd",
		Short:         "The Liquid Metal microVM service",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	run := newRunCommand()
	root.AddCommand(run, newHostCommand())
	// "flintlockd" alone runs the daemon, as "flintlockd run" does.
	root.RunE = run.RunE
	root.Flags().AddFlagSet(run.Flags())
	return root
}
