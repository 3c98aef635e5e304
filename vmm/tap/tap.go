// Package tap opens Linux TAP devices for virtio-net: a tap ember creates
// (non-persistent: it disappears with ember, even after SIGKILL) or an
// existing persistent one it attaches to, optionally enslaved to a bridge.
// Every read and write is one Ethernet frame behind a 12-byte virtio-net
// header (IFF_NO_PI, IFF_VNET_HDR).
package tap

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	vnet "github.com/ember-vmm/ember/devices/virtio/net"
)

// Tap is an open TAP device.
type Tap struct {
	f       *os.File
	name    string
	created bool
}

// Open attaches to the tap called name, creating it when no interface has
// that name ("" lets the kernel pick one). With bridge set, the tap is
// enslaved to that existing bridge. The tap is brought up.
func Open(name, bridge string) (*Tap, error) {
	existed := false
	if name != "" {
		if l, err := netlink.LinkByName(name); err == nil {
			if _, ok := l.(*netlink.Tuntap); !ok {
				return nil, fmt.Errorf("tap %s: an interface of type %s has that name, not a tap", name, l.Type())
			}
			existed = true
		}
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap: /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("tap %q: %w (creating or attaching a tap needs CAP_NET_ADMIN, or a tap made beforehand with `ip tuntap add dev NAME mode tap user $USER`)", name, err)
		}
		return nil, fmt.Errorf("tap %q: %w", name, err)
	}
	t := &Tap{f: os.NewFile(uintptr(fd), "tap"), name: ifr.Name(), created: !existed}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vnet.HeaderSize); err != nil {
		t.Close()
		return nil, fmt.Errorf("tap %s: virtio-net header size: %w", t.name, err)
	}
	if err := t.up(bridge); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

func (t *Tap) up(bridge string) error {
	l, err := netlink.LinkByName(t.name)
	if err != nil {
		return fmt.Errorf("tap %s: %w", t.name, err)
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
			return fmt.Errorf("tap %s: join bridge %s: %w", t.name, bridge, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("tap %s: up: %w", t.name, err)
	}
	return nil
}

// File is the tap's open file, for handing to another process (an L1
// guest's emulator); it stays owned by t.
func (t *Tap) File() *os.File { return t.f }

// Name is the interface name.
func (t *Tap) Name() string { return t.name }

// Read reads one frame with its header.
func (t *Tap) Read(p []byte) (int, error) { return t.f.Read(p) }

// Write writes one frame with its header.
func (t *Tap) Write(p []byte) (int, error) { return t.f.Write(p) }

// SetReadDeadline bounds a Read (to stop a reader).
func (t *Tap) SetReadDeadline(d time.Time) error { return t.f.SetReadDeadline(d) }

// SetOffload says which offloads the reader accepts: the kernel then
// hands it packets with partial checksums or TCP segments up to 64 KiB.
func (t *Tap) SetOffload(csum, tso4, tso6 bool) error {
	var f int
	if csum {
		f |= unix.TUN_F_CSUM
		if tso4 {
			f |= unix.TUN_F_TSO4
		}
		if tso6 {
			f |= unix.TUN_F_TSO6
		}
	}
	return unix.IoctlSetInt(int(t.f.Fd()), unix.TUNSETOFFLOAD, f)
}

// Close closes the tap; one ember created is gone with it.
func (t *Tap) Close() error { return t.f.Close() }
