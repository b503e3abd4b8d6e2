package hostnet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family inet) the host network owns.
const TableName = "liquidmetal"

// nftChain is a base chain of the table.
type nftChain struct {
	name     string
	typ      nftables.ChainType
	hook     *nftables.ChainHook
	priority *nftables.ChainPriority
}

var nftChains = []nftChain{
	{"input", nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter},
	{"forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter},
	{"postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource},
}

// nftRule is one rule; its comment names it, and tells apply whether the
// rule in the kernel is the one wanted.
type nftRule struct {
	chain   string
	comment string
	exprs   []expr.Any
}

// desiredRules is the table's content for a config:
//   - input: packets from the bridge to a management port are dropped;
//   - forward: packets from the bridge to a link-local address are dropped
//     (metadata requests go only to the host's metadata service, never on
//     to a metadata service the host itself may sit behind);
//   - postrouting: VM subnet traffic leaving by the egress interface is
//     masqueraded.
func desiredRules(c *Config, r *resolved) []nftRule {
	var rules []nftRule
	for _, p := range c.ManagementPorts {
		rules = append(rules, nftRule{
			chain:   "input",
			comment: fmt.Sprintf("liquidmetal: VMs on %s may not reach management port tcp/%d", c.Bridge, p),
			exprs: concat(
				matchIfname(expr.MetaKeyIIFNAME, c.Bridge),
				matchTCPDport(uint16(p)),
				verdict(expr.VerdictDrop),
			),
		})
	}
	linkLocal := netip.MustParsePrefix("169.254.0.0/16")
	rules = append(rules, nftRule{
		chain:   "forward",
		comment: fmt.Sprintf("liquidmetal: link-local traffic from %s is never forwarded", c.Bridge),
		exprs: concat(
			matchIfname(expr.MetaKeyIIFNAME, c.Bridge),
			matchIPv4(16, linkLocal, expr.CmpOpEq),
			verdict(expr.VerdictDrop),
		),
	})
	if c.NAT != nil {
		rules = append(rules, nftRule{
			chain:   "postrouting",
			comment: fmt.Sprintf("liquidmetal: masquerade %s leaving by %s", r.subnet, c.NAT.EgressInterface),
			exprs: concat(
				matchIfname(expr.MetaKeyOIFNAME, c.NAT.EgressInterface),
				matchIPv4(12, r.subnet, expr.CmpOpEq),
				matchIPv4(16, r.subnet, expr.CmpOpNeq),
				[]expr.Any{&expr.Masq{}},
			),
		})
	}
	return rules
}

func concat(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

// ifnameBytes is an interface name as nftables compares it (IFNAMSIZ, NUL
// padded).
func ifnameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func matchIfname(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameBytes(name)},
	}
}

// matchIPv4 compares the IPv4 address at offset (12 source, 16
// destination) of the network header with a prefix; in an inet table it
// first matches IPv4.
func matchIPv4(offset uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	mask := make([]byte, 4)
	binary.BigEndian.PutUint32(mask, ^uint32(0)<<(32-p.Bits()))
	net := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: op, Register: 1, Data: net[:]},
	}
}

func matchTCPDport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

var nftTable = &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}

// nftState reports whether the table exists and whether it holds exactly
// the wanted chains and rules (compared by hook, type, priority and rule
// comments).
func nftState(conn *nftables.Conn, rules []nftRule) (exists, current bool, err error) {
	if _, err := conn.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
		if isNotExist(err) {
			return false, false, nil
		}
		return false, false, fmt.Errorf("hostnet: nftables: %w", err)
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return true, false, fmt.Errorf("hostnet: nftables chains: %w", err)
	}
	got := map[string]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table.Name == TableName {
			got[ch.Name] = ch
		}
	}
	if len(got) != len(nftChains) {
		return true, false, nil
	}
	for _, want := range nftChains {
		ch := got[want.name]
		if ch == nil || ch.Type != want.typ || ch.Hooknum == nil || *ch.Hooknum != *want.hook ||
			ch.Priority == nil || *ch.Priority != *want.priority {
			return true, false, nil
		}
		rs, err := conn.GetRules(nftTable, ch)
		if err != nil {
			return true, false, fmt.Errorf("hostnet: nftables rules: %w", err)
		}
		var have, wantComments []string
		for _, r := range rs {
			c, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			have = append(have, c)
		}
		for _, r := range rules {
			if r.chain == want.name {
				wantComments = append(wantComments, r.comment)
			}
		}
		if !slices.Equal(have, wantComments) {
			return true, false, nil
		}
	}
	return true, true, nil
}

// writeNFT replaces the table with the wanted one in one transaction.
func writeNFT(conn *nftables.Conn, exists bool, rules []nftRule) error {
	if exists {
		conn.DelTable(nftTable)
	}
	t := conn.AddTable(&nftables.Table{Name: TableName, Family: nftables.TableFamilyINet})
	chains := map[string]*nftables.Chain{}
	for _, c := range nftChains {
		policy := nftables.ChainPolicyAccept
		chains[c.name] = conn.AddChain(&nftables.Chain{
			Name: c.name, Table: t, Type: c.typ, Hooknum: c.hook, Priority: c.priority, Policy: &policy,
		})
	}
	for _, r := range rules {
		conn.AddRule(&nftables.Rule{
			Table: t, Chain: chains[r.chain], Exprs: r.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment),
		})
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("hostnet: writing nftables table %s: %w", TableName, err)
	}
	return nil
}

// deleteNFT removes the table; a missing table is fine.
func deleteNFT(conn *nftables.Conn) error {
	if _, err := conn.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
		if isNotExist(err) {
			return nil
		}
		return fmt.Errorf("hostnet: nftables: %w", err)
	}
	conn.DelTable(nftTable)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("hostnet: deleting nftables table %s: %w", TableName, err)
	}
	return nil
}
