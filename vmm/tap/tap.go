// Package tap is a Linux TAP device as virtio-net's backend: every read
// and write is one Ethernet frame behind a 12-byte virtio-net header
// (IFF_NO_PI, IFF_VNET_HDR). Creating or attaching the tap, and joining it
// to a bridge, is netsetup's, in ember's front end: the VMM process gets
// the open descriptor and so links no netlink code.
package tap

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Tap is an open TAP device.
type Tap struct {
	f    *os.File
	rc   syscall.RawConn
	name string
	// One writer at a time (the transmit worker): the arguments and
	// results of writev, kept here so a packet allocates nothing.
	wsegs [][]byte
	wn    int
	werr  error
	write func(fd uintptr) bool
}

// wantFlags are the flags a descriptor must carry to serve virtio-net.
const wantFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// New takes over fd, an open tap descriptor (netsetup.OpenTap), after
// checking that it is one with the flags virtio-net needs.
func New(fd int) (*Tap, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return nil, err
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		return nil, fmt.Errorf("descriptor %d is not a tap: %w", fd, err)
	}
	if f := ifr.Uint16(); f&wantFlags != wantFlags {
		return nil, fmt.Errorf("tap %s: flags %#x, want tap, no packet info, virtio-net header", ifr.Name(), f)
	}
	// A non-blocking descriptor goes to the runtime's poller, so a
	// reader blocks a goroutine, not a thread, and deadlines work.
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("tap %s: %w", ifr.Name(), err)
	}
	t := &Tap{f: os.NewFile(uintptr(fd), "tap"), name: ifr.Name()}
	if t.rc, err = t.f.SyscallConn(); err != nil {
		return nil, fmt.Errorf("tap %s: %w", t.name, err)
	}
	t.write = func(fd uintptr) bool {
		t.wn, t.werr = unix.Writev(int(fd), t.wsegs)
		return t.werr != unix.EAGAIN
	}
	return t, nil
}

// Name is the interface name.
func (t *Tap) Name() string { return t.name }

// Read reads one frame with its header.
func (t *Tap) Read(p []byte) (int, error) { return t.f.Read(p) }

// Write writes one frame with its header.
func (t *Tap) Write(p []byte) (int, error) { return t.f.Write(p) }

// WriteVec writes one frame, with its header, given in pieces.
func (t *Tap) WriteVec(segs [][]byte) (int, error) {
	t.wsegs = segs
	err := t.rc.Write(t.write)
	t.wsegs = nil
	if err != nil {
		return 0, err
	}
	return t.wn, t.werr
}

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
