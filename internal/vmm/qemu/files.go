package qemu

// qmpSocket is the VM's QMP socket in its folder; the other files are
// process's (vmm.pid, vmm.cmdline, console.log, vmm.log).
const qmpSocket = "qmp.sock"
