package testimages

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
)

// guestModules are the kernel modules the guest needs, in load order
// (dependencies found in each module's .modinfo are loaded first anyway).
// Built-in ones are skipped. Optional ones are left out when the kernel
// has neither the module nor the built-in.
var guestModules = []struct {
	name     string
	optional bool
}{
	{"virtio_ring", false},
	{"virtio", false},
	{"virtio_mmio", false},
	{"virtio_blk", false},
	{"failover", false},
	{"net_failover", false},
	{"virtio_net", false},
	// cidata disks: iso9660 or vfat (whose default codepage and iocharsets
	// are loaded by name at mount time).
	{"isofs", false},
	{"fat", false},
	{"vfat", false},
	{"nls_cp437", true},
	{"nls_ascii", true},
	{"nls_utf8", true},
	{"nls_iso8859_1", true},
	// virtio-fs volumes and vsock, for the providers that offer them.
	{"fuse", true},
	{"virtiofs", true},
	{"vmw_vsock_virtio_transport", true},
}

// kernelModules indexes the modules of one kernel tree
// (lib/modules/<version> of the kernel package).
type kernelModules struct {
	dir     string            // lib/modules/<version>
	path    map[string]string // module name -> path relative to dir
	builtin map[string]bool
}

// moduleName normalises a module file or name ("nls_iso8859-1.ko") to the
// kernel's module name ("nls_iso8859_1").
func moduleName(s string) string {
	s = filepath.Base(s)
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

func loadKernelModules(dir string) (*kernelModules, error) {
	km := &kernelModules{dir: dir, path: map[string]string{}, builtin: map[string]bool{}}
	b, err := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	if err != nil {
		return nil, fmt.Errorf("kernel package without modules.builtin: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			km.builtin[moduleName(l)] = true
		}
	}
	err = filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(p, ".ko") {
			rel, _ := filepath.Rel(dir, p)
			km.path[moduleName(p)] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list kernel modules: %w", err)
	}
	return km, nil
}

// modinfoDepends reads the depends= entry of a module's .modinfo section.
func modinfoDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("%s has no .modinfo: %w", path, errdefs.ErrInvalidArgument)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	var deps []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok && len(v) > 0 {
			for _, d := range strings.Split(string(v), ",") {
				deps = append(deps, moduleName(d))
			}
		}
	}
	return deps, nil
}

// loadOrder returns the module files (relative to km.dir) to insmod, in an
// order where every module follows its dependencies, skipping built-ins.
func (km *kernelModules) loadOrder() ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, optional bool) error
	visit = func(name string, optional bool) error {
		switch {
		case state[name] == 2 || km.builtin[name]:
			return nil
		case state[name] == 1:
			return fmt.Errorf("module dependency cycle at %s: %w", name, errdefs.ErrInvalidArgument)
		}
		rel, ok := km.path[name]
		if !ok {
			if optional {
				return nil
			}
			return fmt.Errorf("kernel module %s is neither built in nor in the package: %w", name, errdefs.ErrNotFound)
		}
		state[name] = 1
		deps, err := modinfoDepends(filepath.Join(km.dir, rel))
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, false); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		state[name] = 2
		order = append(order, rel)
		return nil
	}
	for _, m := range guestModules {
		if err := visit(m.name, m.optional); err != nil {
			return nil, err
		}
	}
	return order, nil
}
