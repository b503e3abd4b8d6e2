package hostnet

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
)

// Files of the state folder.
const (
	stateFile     = "state.json"
	lockFile      = "lock"
	dnsmasqConf   = "dnsmasq.conf"
	dnsmasqLeases = "dnsmasq.leases"
	dnsmasqPid    = "dnsmasq.pid"
	dnsmasqLog    = "dnsmasq.log"
)

// Kinds of things apply creates or changes, undone by teardown in reverse
// order of their recording.
const (
	kindDir     = "dir"     // the state folder itself
	kindLink    = "link"    // a link apply created (VLAN, bridge): deleted
	kindMaster  = "master"  // an existing link apply attached to the bridge: released
	kindUp      = "up"      // an existing link apply set up: set down
	kindAddress = "address" // an address apply added (Name: link, Value: CIDR): removed
	kindSysctl  = "sysctl"  // a sysctl apply changed (Prev: the old value): restored
	kindNFT     = "nftables"
	kindDnsmasq = "dnsmasq" // the dnsmasq apply runs: stopped, its files removed
)

// record is one thing apply did.
type record struct {
	Kind  string `json:"kind"`
	Name  string `json:"name"`
	Value string `json:"value,omitempty"`
	Prev  string `json:"prev,omitempty"`
}

// state is what apply created, kept in the state folder so that teardown
// removes exactly that.
type state struct {
	// Bridge and VLAN are the names apply managed, to refuse a changed
	// config that would orphan them.
	Bridge string `json:"bridge,omitempty"`
	VLAN   string `json:"vlan,omitempty"`
	// DnsmasqConfig is the sha256 of the configuration the running dnsmasq
	// was started with.
	DnsmasqConfig string   `json:"dnsmasqConfig,omitempty"`
	Records       []record `json:"records"`
}

func (s *state) has(kind, name string) bool {
	return s.find(kind, name) >= 0
}

func (s *state) find(kind, name string) int {
	return slices.IndexFunc(s.Records, func(r record) bool { return r.Kind == kind && r.Name == name })
}

// add records r unless a record of its kind and name is there.
func (s *state) add(r record) {
	if !s.has(r.Kind, r.Name) {
		s.Records = append(s.Records, r)
	}
}

func (s *state) remove(kind, name string) {
	if i := s.find(kind, name); i >= 0 {
		s.Records = slices.Delete(s.Records, i, i+1)
	}
}

// readState returns the state in dir; an empty one when there is none.
func readState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return &state{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("hostnet: reading state: %w", err)
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("hostnet: state file %s: %w", filepath.Join(dir, stateFile), err)
	}
	return &s, nil
}

// write saves the state atomically.
func (s *state) write(dir string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("hostnet: writing state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, stateFile)); err != nil {
		return fmt.Errorf("hostnet: writing state: %w", err)
	}
	return nil
}

// lock takes an exclusive lock on the state folder (which must exist) so
// that two runs do not interleave; the returned unlock may be called more
// than once.
func lock(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("hostnet: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("hostnet: lock: %w", err)
	}
	var once sync.Once
	return func() { once.Do(func() { f.Close() }) }, nil
}
