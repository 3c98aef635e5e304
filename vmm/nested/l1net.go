package nested

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
)

// TapNIC is a host tap that L1 gets as a NIC: QEMU takes the open file,
// so the tap keeps the owner and lifetime it has on the host.
type TapNIC struct {
	File *os.File
	MAC  net.HardwareAddr
}

// L1Network is the network the inner ember sets up in L1 before its VM
// starts: the relay NIC's address, and per host tap a bridge joining
// L1's NIC on that tap with the inner VM's tap.
type L1Network struct {
	RelayMAC string     `json:"relay_mac,omitempty"`
	Bridges  []L1Bridge `json:"bridges,omitempty"`
}

// L1Bridge is a bridge in L1 over the NIC with that MAC.
type L1Bridge struct {
	NIC  string `json:"nic"`
	Name string `json:"name"`
}

// RandomMAC is a random locally administered unicast address.
func RandomMAC() net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	_, _ = rand.Read(m)
	m[0] = m[0]&^1 | 2
	return m
}

// BridgeName is the bridge in L1 of host tap i.
func BridgeName(i int) string { return "emberbr" + strconv.Itoa(i) }

// nicWait bounds how long L1's NICs may take to appear (the driver
// probes them as its module loads, before the command runs).
const nicWait = 10 * time.Second

// Setup brings L1's network up; it runs inside L1.
func (n *L1Network) Setup() error {
	if n.RelayMAC != "" {
		l, err := linkByMAC(n.RelayMAC)
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr(relayL1Addr + "/24")
		if err := netlink.AddrReplace(l, addr); err != nil {
			return fmt.Errorf("L1 relay NIC: %w", err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("L1 relay NIC: %w", err)
		}
	}
	for _, b := range n.Bridges {
		l, err := linkByMAC(b.NIC)
		if err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: b.Name}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("L1 bridge %s: %w", b.Name, err)
		}
		// The bridge only forwards: no addresses, no IPv6 chatter of
		// its own on the user's network.
		_ = os.WriteFile(filepath.Join("/proc/sys/net/ipv6/conf", b.Name, "disable_ipv6"), []byte("1"), 0)
		_ = os.WriteFile(filepath.Join("/proc/sys/net/ipv6/conf", l.Attrs().Name, "disable_ipv6"), []byte("1"), 0)
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("L1 bridge %s: %w", b.Name, err)
		}
		for _, x := range []netlink.Link{l, br} {
			if err := netlink.LinkSetUp(x); err != nil {
				return fmt.Errorf("L1 bridge %s: %w", b.Name, err)
			}
		}
	}
	return nil
}

func linkByMAC(mac string) (netlink.Link, error) {
	want, err := net.ParseMAC(mac)
	if err != nil {
		return nil, fmt.Errorf("L1 NIC %q: %w", mac, err)
	}
	deadline := time.Now().Add(nicWait)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("L1 NICs: %w", err)
		}
		for _, l := range links {
			if l.Type() == "device" && l.Attrs().HardwareAddr.String() == want.String() {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("L1 has no NIC with MAC %s after %s (is virtio_net in the L1 image?)", want, nicWait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
