package mds

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

var (
	bridgeTable = &nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge}
	ipTable     = &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
)

// writeRules replaces both tables with the rules of the registered VMs, in
// one transaction. It runs in the service's namespace with s.mu held.
func (s *Server) writeRules() error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("mds: nftables: %w", err)
	}
	for _, t := range []*nftables.Table{bridgeTable, ipTable} {
		if exists, err := tableExists(conn, t); err != nil {
			return err
		} else if exists {
			conn.DelTable(t)
		}
	}
	bt := conn.AddTable(&nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge})
	it := conn.AddTable(&nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4})
	accept := nftables.ChainPolicyAccept
	// Bridge prerouting runs before the IP stack sees the packet; -300
	// (dstnat) is the earliest named bridge priority.
	bpre := conn.AddChain(&nftables.Chain{Name: "prerouting", Table: bt, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-300), Policy: &accept})
	nat := conn.AddChain(&nftables.Chain{Name: "prerouting", Table: it, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	in := conn.AddChain(&nftables.Chain{Name: "input", Table: it, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})

	uids := make([]string, 0, len(s.vms))
	for u := range s.vms {
		uids = append(uids, u)
	}
	slices.Sort(uids)
	for _, uid := range uids {
		v := s.vms[uid]
		comment := func(what string) []byte {
			return userdata.AppendString(nil, userdata.TypeComment, "vm "+uid+": "+what)
		}
		for _, dev := range v.devices {
			conn.AddRule(&nftables.Rule{Table: bt, Chain: bpre, UserData: comment("mark metadata requests"), Exprs: concat(
				matchIifname(dev),
				matchMetadataDest(s.opts.Address, true),
				[]expr.Any{
					&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(v.mark)},
					&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
				},
			)})
		}
		conn.AddRule(&nftables.Rule{Table: it, Chain: nat, UserData: comment("to its listener"), Exprs: concat(
			matchMark(v.mark, expr.CmpOpEq),
			matchMetadataDest(s.opts.Address, false),
			[]expr.Any{
				&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(v.port))},
				&expr.Redir{RegisterProtoMin: 1},
			},
		)})
		conn.AddRule(&nftables.Rule{Table: it, Chain: in, UserData: comment("only its own requests reach its listener"), Exprs: concat(
			matchTCPDport(uint16(v.port)),
			matchMark(v.mark, expr.CmpOpNeq),
			[]expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}},
		)})
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("mds: writing nftables tables %s: %w", TableName, err)
	}
	return nil
}

// deleteTables removes both tables; missing ones are fine.
func deleteTables() error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("mds: nftables: %w", err)
	}
	n := 0
	for _, t := range []*nftables.Table{bridgeTable, ipTable} {
		exists, err := tableExists(conn, t)
		if err != nil {
			return err
		}
		if exists {
			conn.DelTable(t)
			n++
		}
	}
	if n == 0 {
		return nil
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("mds: deleting nftables tables: %w", err)
	}
	return nil
}

func tableExists(conn *nftables.Conn, t *nftables.Table) (bool, error) {
	_, err := conn.ListTableOfFamily(t.Name, t.Family)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return false, fmt.Errorf("mds: nftables: %w", err)
}

func concat(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }

func matchIifname(name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

func matchMark(mark uint32, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
	}
}

// matchMetadataDest matches IPv4 TCP to the service's address (by default
// 169.254.169.254:80); in the bridge family the frame's protocol is checked
// first.
func matchMetadataDest(addr netip.AddrPort, bridge bool) []expr.Any {
	ip := addr.Addr().As4()
	var e []expr.Any
	if bridge {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(unix.ETH_P_IP)},
		)
	}
	e = append(e,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip[:]},
	)
	return append(e, matchTCPDport(addr.Port())...)
}

func matchTCPDport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}
