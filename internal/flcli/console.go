package flcli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	powerv1 "github.com/liquidmetal-go/liquidmetal/api/services/power/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// DefaultStateDir is flintlockd's default state folder.
const DefaultStateDir = "/var/lib/flintlock"

// maxFileTick bounds how long console -f lets new output sit unread.
const maxFileTick = 250 * time.Millisecond

func consoleCommand(g *globals) *cobra.Command {
	var (
		follow   bool
		stateDir string
		offset   int64
	)
	cmd := &cobra.Command{
		Use:   "console UID",
		Short: "Print a microVM's serial console log",
		Long: `Print a microVM's serial console log, streamed by flintlockd (the log
is rotated under a size cap: the oldest output may be gone). With -f it
keeps printing new output until the microVM is deleted or you press Ctrl-C.
--offset starts at that byte of the output; a negative one counts from the
end. With --state-dir, fl reads the log file itself on the daemon's host
(<state-dir>/vm/<namespace>/<name>/<uid>/console.log) instead.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			def := defaultTimeout
			if follow {
				def = 0
			}
			ctx, cancel := g.withTimeout(cmd.Context(), def)
			defer cancel()
			out := cmd.OutOrStdout()
			if !cmd.Flags().Changed("state-dir") {
				return streamConsole(ctx, c, args[0], offset, follow, out)
			}

			resp, err := c.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: args[0]})
			if err != nil {
				return rpcError("get "+args[0], err)
			}
			path, err := consolePath(stateDir, resp.GetMicrovm().GetSpec())
			if err != nil {
				return err
			}
			if !follow {
				f, err := os.Open(path)
				if err != nil {
					return fmt.Errorf("console log: %w", err)
				}
				defer f.Close()
				_, err = io.Copy(out, f)
				return err
			}
			return g.followConsole(ctx, c, args[0], path, out)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until the microVM is deleted")
	cmd.Flags().Int64Var(&offset, "offset", 0, "start at this byte of the console output; negative counts from the end")
	cmd.Flags().StringVar(&stateDir, "state-dir", DefaultStateDir, "read the log file in flintlockd's state folder on this host instead of asking the daemon")
	return cmd
}

// streamConsole copies the console stream of the power service to out; the
// end of ctx (Ctrl-C, --timeout) is a normal end.
func streamConsole(ctx context.Context, c *client, uid string, offset int64, follow bool, out io.Writer) error {
	s, err := c.power().StreamConsole(ctx, &powerv1.StreamConsoleRequest{Uid: uid, Offset: offset, Follow: follow})
	if err != nil {
		return rpcError("console "+uid, err)
	}
	for {
		chunk, err := s.Recv()
		switch code := status.Code(err); {
		case errors.Is(err, io.EOF):
			return nil
		case ctx.Err() != nil || code == codes.DeadlineExceeded || code == codes.Canceled:
			return nil
		case err != nil:
			return rpcError("console "+uid, err)
		}
		if _, err := out.Write(chunk.GetData()); err != nil {
			return err
		}
	}
}

// consolePath is where the daemon keeps the VM's console log. The parts come
// from the server; each must be one plain path element.
func consolePath(stateDir string, spec *types.MicroVMSpec) (string, error) {
	parts := []string{spec.GetNamespace(), spec.GetId(), spec.GetUid()}
	for _, p := range parts {
		if p == "" || p == "." || p == ".." || strings.ContainsAny(p, `/\`) {
			return "", fmt.Errorf("server returned an unusable microVM identity %q", parts)
		}
	}
	return filepath.Join(stateDir, "vm", parts[0], parts[1], parts[2], "console.log"), nil
}

// followConsole copies the log as it grows (starting over when it is
// truncated, waiting while it does not exist yet) until the VM is gone or
// ctx ends; both are a normal end.
func (g *globals) followConsole(ctx context.Context, c *client, uid, path string, out io.Writer) error {
	tick := min(g.pollInterval, maxFileTick)
	var (
		f         *os.File
		offset    int64
		lastCheck = time.Now()
	)
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	drain := func() error {
		if f == nil {
			var err error
			if f, err = os.Open(path); errors.Is(err, fs.ErrNotExist) {
				return nil
			} else if err != nil {
				return fmt.Errorf("console log: %w", err)
			}
			offset = 0
		}
		if fi, err := f.Stat(); err == nil && fi.Size() < offset {
			// Truncated or replaced in place: read again from the start.
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return err
			}
			offset = 0
		}
		n, err := io.Copy(out, f)
		offset += n
		return err
	}
	for {
		if err := drain(); err != nil {
			return err
		}
		if time.Since(lastCheck) >= g.pollInterval {
			lastCheck = time.Now()
			_, err := c.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: uid})
			switch code := status.Code(err); {
			case ctx.Err() != nil || code == codes.DeadlineExceeded || code == codes.Canceled:
				return nil // --timeout or Ctrl-C
			case code == codes.NotFound:
				return drain() // what the VM wrote last
			case err != nil && code != codes.Unavailable:
				return rpcError("get "+uid, err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(tick):
		}
	}
}
