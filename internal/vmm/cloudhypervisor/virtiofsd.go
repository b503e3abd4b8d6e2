package cloudhypervisor

import (
	"context"
	"os"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// Shared folders are served by the virtiofsd daemons of process.Virtiofsd,
// one per folder, as for QEMU; these name them as the tests and the
// provider's documents refer to them.
var (
	fsSocketName  = process.VirtiofsSocketName
	virtiofsdArgs = process.VirtiofsdArgs
	virtiofsdUID  = process.VirtiofsdUID
)

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
