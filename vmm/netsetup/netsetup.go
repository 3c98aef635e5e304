// Package netsetup prepares the host side of VM networking with netlink:
// the taps virtio-net serves, and L1's NICs and bridges when ember runs
// nested. It runs in ember's front end before the VMM starts, which then
// inherits the open tap descriptors (package tap).
package netsetup

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	vnet "github.com/ember-vmm/ember/devices/virtio/net"
	"github.com/ember-vmm/ember/vmm/nested"
)

// OpenTap attaches to the tap called name, creating it when no interface
// has that name ("" lets the kernel pick one), and returns its open
// descriptor (non-blocking, close-on-exec) and name. A tap ember creates
// is not persistent: it disappears with its last descriptor, even after
// SIGKILL. With bridge set, the tap is enslaved to that existing bridge.
// The tap is brought up.
func OpenTap(name, bridge string) (fd int, ifname string, err error) {
	if name != "" {
		if l, err := netlink.LinkByName(name); err == nil {
			if _, ok := l.(*netlink.Tuntap); !ok {
				return -1, "", fmt.Errorf("tap %s: an interface of type %s has that name, not a tap", name, l.Type())
			}
		}
	}
	fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, "", fmt.Errorf("tap: /dev/net/tun: %w", err)
	}
	fail := func(err error) (int, string, error) {
		unix.Close(fd)
		return -1, "", err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fail(fmt.Errorf("tap %q: %w", name, err))
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fail(fmt.Errorf("tap %q: %w (creating or attaching a tap needs CAP_NET_ADMIN, or a tap made beforehand with `ip tuntap add dev NAME mode tap user $USER`)", name, err))
		}
		return fail(fmt.Errorf("tap %q: %w", name, err))
	}
	ifname = ifr.Name()
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vnet.HeaderSize); err != nil {
		return fail(fmt.Errorf("tap %s: virtio-net header size: %w", ifname, err))
	}
	if err := up(ifname, bridge); err != nil {
		return fail(err)
	}
	return fd, ifname, nil
}

func up(name, bridge string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	if bridge != "" {
		br, err := netlink.LinkByName(bridge)
		if err != nil {
			return fmt.Errorf("bridge %s: %w", bridge, err)
		}
		if _, ok := br.(*netlink.Bridge); !ok {
			return fmt.Errorf("bridge %s: a %s, not a bridge", bridge, br.Type())
		}
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("tap %s: join bridge %s: %w", name, bridge, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("tap %s: up: %w", name, err)
	}
	return nil
}

// nicWait bounds how long L1's NICs may take to appear (the driver
// probes them as its module loads, before the command runs).
const nicWait = 10 * time.Second

// SetupL1 brings L1's network up; it runs inside L1, before the inner
// VM's taps are opened on its bridges.
func SetupL1(n *nested.L1Network) error {
	if n.RelayMAC != "" {
		l, err := linkByMAC(n.RelayMAC)
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr(nested.RelayL1Addr + "/24")
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
