package main

import (
	"fmt"
	"log/slog"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// resolveVMMUser turns --vmm-user into the identity QEMU runs as. Unset,
// it is the dedicated system user process.DefaultVMMUser when the host
// has one (hack/install-deps.sh creates it), else root, with a warning:
// a guest escaping its VMM would then own the host.
func resolveVMMUser(flag string, log *slog.Logger) (process.User, error) {
	if flag != "" {
		u, err := process.LookupUser(flag)
		if err != nil {
			return process.User{}, fmt.Errorf("--vmm-user: %w", err)
		}
		if u.IsRoot() {
			log.Warn("VMM processes run as root (--vmm-user)")
		} else {
			log.Info("VMM processes run unprivileged", "user", u.String())
		}
		return u, nil
	}
	u, err := process.LookupUser(process.DefaultVMMUser)
	switch {
	case errdefs.IsNotFound(err):
		log.Warn("VMM processes run as root: no "+process.DefaultVMMUser+" user on this host; create it (hack/install-deps.sh) or set --vmm-user", "err", err)
		return process.Root, nil
	case err != nil:
		return process.User{}, fmt.Errorf("vmm user %s: %w", process.DefaultVMMUser, err)
	case u.IsRoot():
		return process.User{}, fmt.Errorf("vmm user %s has uid 0: %w", process.DefaultVMMUser, errdefs.ErrInvalidArgument)
	}
	log.Info("VMM processes run unprivileged", "user", u.String())
	return u, nil
}
