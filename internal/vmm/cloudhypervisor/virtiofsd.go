package cloudhypervisor

import (
	"context"
	"os"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

// Shared folders are served by process.Virtiofsd, as for QEMU.

// startVirtiofsd starts one virtiofsd per shared folder and returns their
// sockets as Cloud Hypervisor is given them, once each listens.
func (p *Provider) startVirtiofsd(ctx context.Context, vm vmm.VM, logf *os.File) ([]string, error) {
	return p.fsd.Start(ctx, vm.UID, vm.Dir, vm.SharedDirs, logf, p.opts.User)
}

// stopVirtiofsd ends the virtiofsd daemons of VM uid that still run.
func (p *Provider) stopVirtiofsd(uid string) {
	if err := p.fsd.Stop(uid); err != nil {
		p.log.Warn("cannot stop virtiofsd", "uid", uid, "error", err)
	}
}
