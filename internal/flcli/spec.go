package flcli

import (
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// specFlags are the create flags that describe a MicroVMSpec.
type specFlags struct {
	file              string
	name              string
	namespace         string
	vcpu              int32
	memory            int32
	kernelImage       string
	kernelFilename    string
	cmdline           []string
	initrdImage       string
	initrdFilename    string
	rootImage         string
	labels            []string
	userDataFile      string
	metaDataFile      string
	vendorDataFile    string
	networkConfigFile string
	interfaces        []string
	provider          string
	addNetworkConfig  bool
	restartPolicy     string
	maxRestarts       int32
}

func (s *specFlags) register(fs *pflag.FlagSet) {
	fs.StringVarP(&s.file, "file", "f", "", "MicroVMSpec as proto JSON or YAML (\"-\" reads stdin); other flags override its fields")
	fs.StringVar(&s.name, "name", "", "name of the microVM (the spec's id)")
	fs.StringVar(&s.namespace, "namespace", "", "namespace (server default: default)")
	fs.Int32Var(&s.vcpu, "vcpu", 0, "number of vCPUs (server default: 2)")
	fs.Int32Var(&s.memory, "memory", 0, "memory in MiB (server default: 1024)")
	fs.StringVar(&s.kernelImage, "kernel-image", "", "OCI image holding the kernel")
	fs.StringVar(&s.kernelFilename, "kernel-filename", "", "path of the kernel inside the kernel image")
	fs.StringArrayVar(&s.cmdline, "cmdline", nil, "extra kernel argument key=value or key (repeatable)")
	fs.BoolVar(&s.addNetworkConfig, "add-network-config", false, "let the daemon add the guest network configuration to the kernel command line")
	fs.StringVar(&s.initrdImage, "initrd-image", "", "OCI image holding the initrd")
	fs.StringVar(&s.initrdFilename, "initrd-filename", "", "path of the initrd inside the initrd image")
	fs.StringVar(&s.rootImage, "root-image", "", "OCI image for the root volume")
	fs.StringArrayVar(&s.labels, "label", nil, "label key=value (repeatable)")
	fs.StringVar(&s.userDataFile, "user-data-file", "", "cloud-init user-data file")
	fs.StringVar(&s.metaDataFile, "meta-data-file", "", "cloud-init meta-data file")
	fs.StringVar(&s.vendorDataFile, "vendor-data-file", "", "cloud-init vendor-data file")
	fs.StringVar(&s.networkConfigFile, "network-config-file", "", "cloud-init network-config file")
	fs.StringArrayVar(&s.interfaces, "interface", nil, "network interface type:guest-device[:mac][:bridge], e.g. tap:eth1 or macvtap:eth0:02:00:00:00:00:01 (repeatable)")
	fs.StringVar(&s.provider, "provider", "", "VMM provider (server default)")
	fs.StringVar(&s.restartPolicy, "restart-policy", "", "what a VMM exit or guest panic does: never (default), on-failure or always")
	fs.Int32Var(&s.maxRestarts, "max-restarts", 0, "restarts allowed before the VM is FAILED (0: 5 for on-failure, unlimited for always)")
}

// build returns the spec: the file's (when -f is given) with every flag the
// user set applied on top.
func (s *specFlags) build(fs *pflag.FlagSet, stdin func() ([]byte, error)) (*types.MicroVMSpec, error) {
	spec := &types.MicroVMSpec{}
	if s.file != "" {
		var data []byte
		var err error
		if s.file == "-" {
			data, err = stdin()
		} else {
			data, err = os.ReadFile(s.file)
		}
		if err != nil {
			return nil, fmt.Errorf("reading spec: %w", err)
		}
		if spec, err = parseSpec(data); err != nil {
			return nil, fmt.Errorf("spec %s: %w", s.file, err)
		}
	}
	set := fs.Changed

	if set("name") {
		spec.Id = s.name
	}
	if set("namespace") {
		spec.Namespace = s.namespace
	}
	if set("vcpu") {
		spec.Vcpu = s.vcpu
	}
	if set("memory") {
		spec.MemoryInMb = s.memory
	}
	if set("provider") {
		spec.Provider = proto.String(s.provider)
	}
	if set("restart-policy") {
		spec.RestartPolicy = s.restartPolicy
	}
	if set("max-restarts") {
		spec.MaxRestarts = s.maxRestarts
	}

	if set("kernel-image") || set("kernel-filename") || set("cmdline") || set("add-network-config") {
		if spec.Kernel == nil {
			spec.Kernel = &types.Kernel{}
		}
		k := spec.Kernel
		if set("kernel-image") {
			k.Image = s.kernelImage
		}
		if set("kernel-filename") {
			k.Filename = proto.String(s.kernelFilename)
		}
		if set("add-network-config") {
			k.AddNetworkConfig = s.addNetworkConfig
		}
		for _, arg := range s.cmdline {
			key, val, _ := strings.Cut(arg, "=")
			if key == "" {
				return nil, fmt.Errorf("--cmdline %q: want key=value or key", arg)
			}
			if k.Cmdline == nil {
				k.Cmdline = map[string]string{}
			}
			k.Cmdline[key] = val
		}
	}

	if set("initrd-image") || set("initrd-filename") {
		if spec.Initrd == nil {
			spec.Initrd = &types.Initrd{}
		}
		if set("initrd-image") {
			spec.Initrd.Image = s.initrdImage
		}
		if set("initrd-filename") {
			spec.Initrd.Filename = proto.String(s.initrdFilename)
		}
	}

	if set("root-image") {
		if spec.RootVolume == nil {
			spec.RootVolume = &types.Volume{Id: "root"}
		}
		spec.RootVolume.Source = &types.VolumeSource{ContainerSource: proto.String(s.rootImage)}
	}

	for _, l := range s.labels {
		key, val, ok := strings.Cut(l, "=")
		if !ok || key == "" {
			return nil, fmt.Errorf("--label %q: want key=value", l)
		}
		if spec.Labels == nil {
			spec.Labels = map[string]string{}
		}
		spec.Labels[key] = val
	}

	for _, m := range []struct{ file, key string }{
		{s.metaDataFile, "meta-data"},
		{s.userDataFile, "user-data"},
		{s.vendorDataFile, "vendor-data"},
		{s.networkConfigFile, "network-config"},
	} {
		if m.file == "" {
			continue
		}
		data, err := os.ReadFile(m.file)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", m.key, err)
		}
		if spec.Metadata == nil {
			spec.Metadata = map[string]string{}
		}
		spec.Metadata[m.key] = base64.StdEncoding.EncodeToString(data)
	}

	for _, arg := range s.interfaces {
		iface, err := parseInterface(arg)
		if err != nil {
			return nil, fmt.Errorf("--interface %q: %w", arg, err)
		}
		spec.Interfaces = append(spec.Interfaces, iface)
	}
	return spec, nil
}

// parseSpec reads a MicroVMSpec in proto JSON or YAML (field names as in
// the proto or in lowerCamelCase). Unknown fields are errors, so typos show.
func parseSpec(data []byte) (*types.MicroVMSpec, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, err
	}
	spec := &types.MicroVMSpec{}
	if err := protojson.Unmarshal(js, spec); err != nil {
		return nil, err
	}
	return spec, nil
}

// parseInterface reads type:device[:mac][:bridge]. The MAC address has
// colons itself; an empty MAC ("tap:eth0::br0") leaves it to the daemon.
func parseInterface(s string) (*types.NetworkInterface, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return nil, fmt.Errorf("want type:device[:mac][:bridge]")
	}
	iface := &types.NetworkInterface{}
	switch strings.ToLower(kind) {
	case "tap":
		iface.Type = types.NetworkInterface_TAP
	case "macvtap":
		iface.Type = types.NetworkInterface_MACVTAP
	default:
		return nil, fmt.Errorf("type %q is not tap or macvtap", kind)
	}
	dev, rest, _ := strings.Cut(rest, ":")
	if dev == "" {
		return nil, fmt.Errorf("device name is empty")
	}
	iface.DeviceId = dev

	var mac, bridge string
	switch {
	case rest == "":
	case strings.HasPrefix(rest, ":"): // no MAC, a bridge
		bridge = rest[1:]
	case len(rest) >= 17 && isMAC(rest[:17]) && (len(rest) == 17 || rest[17] == ':'):
		mac = rest[:17]
		if len(rest) > 17 {
			bridge = rest[18:]
		}
	default:
		first, after, more := strings.Cut(rest, ":")
		switch {
		case isMAC(first): // e.g. 02-00-00-00-00-01
			mac, bridge = first, after
		case !more:
			bridge = first
		default:
			return nil, fmt.Errorf("%q is neither mac[:bridge] nor a bridge name", rest)
		}
	}
	if mac != "" {
		iface.GuestMac = proto.String(mac)
	}
	if bridge != "" {
		if strings.Contains(bridge, ":") {
			return nil, fmt.Errorf("bridge name %q contains ':'", bridge)
		}
		iface.Overrides = &types.NetworkOverrides{BridgeName: proto.String(bridge)}
	}
	return iface, nil
}

func isMAC(s string) bool {
	hw, err := net.ParseMAC(s)
	return err == nil && len(hw) == 6
}
