package net

import (
	"bytes"
	"log/slog"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ember-vmm/ember/devices/virtio"
	"github.com/ember-vmm/ember/devices/virtio/virtiotest"
)

// fakeTap is one end of a packet socket pair; the test holds the other.
type fakeTap struct {
	*os.File
	offload [3]bool
}

func (f *fakeTap) WriteVec(segs [][]byte) (int, error) { return f.Write(bytes.Join(segs, nil)) }

func (f *fakeTap) SetOffload(csum, tso4, tso6 bool) error {
	f.offload = [3]bool{csum, tso4, tso6}
	return nil
}

func newTap(t *testing.T) (*fakeTap, *os.File) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := os.NewFile(uintptr(fds[0]), "tap"), os.NewFile(uintptr(fds[1]), "host")
	t.Cleanup(func() { a.Close(); b.Close() })
	return &fakeTap{File: a}, b
}

var mac = [6]byte{0x06, 0, 0, 0, 0, 0x42}

func frame(n int, fill byte) []byte {
	b := make([]byte, HeaderSize+n)
	for i := HeaderSize; i < len(b); i++ {
		b[i] = fill + byte(i)
	}
	return b
}

func TestTransmit(t *testing.T) {
	tap, host := newTap(t)
	d := virtiotest.New(t, New(tap, mac, slog.New(slog.DiscardHandler)))
	d.Init(virtio.FeatureVersion1|virtio.FeatureEventIdx|FeatMAC|FeatCSUM|FeatGuestCSUM|FeatMrgRxBuf|FeatGuestTSO4, 16, 16)
	if !tap.offload[0] || !tap.offload[1] || tap.offload[2] {
		t.Fatalf("tap offloads %v, want csum and tso4", tap.offload)
	}
	if got := d.Config(0, 6); !bytes.Equal(got, mac[:]) {
		t.Fatalf("config mac %x", got)
	}
	pkt := frame(1000, 7)
	d.Do(queueTX, virtiotest.Buf{Data: pkt[:HeaderSize]}, virtiotest.Buf{Data: pkt[HeaderSize:]})
	got := make([]byte, maxFrame)
	_ = host.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := host.Read(got)
	if err != nil || !bytes.Equal(got[:n], pkt) {
		t.Fatalf("tap got %d bytes (%v), want the packet whole", n, err)
	}
	// Runts and giants are the guest's fault, and nothing reaches the tap.
	d.Do(queueTX, virtiotest.Buf{Data: make([]byte, 5)})
	if d.Dev.Stats().GuestFaults.Load() != 1 {
		t.Errorf("guest faults %d", d.Dev.Stats().GuestFaults.Load())
	}
}

// A packet in more pieces than one writev takes still leaves whole, and
// in order (through a copy).
func TestTransmitManyPieces(t *testing.T) {
	tap, host := newTap(t)
	d := New(tap, mac, slog.New(slog.DiscardHandler))
	pkt := frame(virtio.IOVMax+100, 3)
	pieces := [][]byte{pkt[:HeaderSize]}
	for i := HeaderSize; i < len(pkt); i++ {
		pieces = append(pieces, pkt[i:i+1])
	}
	d.transmit(virtio.NewChain(pieces, nil))
	got := make([]byte, maxFrame)
	_ = host.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := host.Read(got)
	if err != nil || !bytes.Equal(got[:n], pkt) {
		t.Fatalf("tap got %d bytes (%v), want the %d-byte packet whole", n, err, len(pkt))
	}
}

func TestReceiveMerged(t *testing.T) {
	tap, host := newTap(t)
	d := virtiotest.New(t, New(tap, mac, slog.New(slog.DiscardHandler)))
	d.Init(virtio.FeatureVersion1|virtio.FeatureEventIdx|FeatMAC|FeatMrgRxBuf, 16, 16)
	var rx []*virtiotest.Request
	for range 8 {
		rx = append(rx, d.Submit(queueRX, false, virtiotest.Buf{WriteLen: 1526}))
	}
	small, big := frame(60, 1), frame(4000, 2)
	host.Write(small)
	host.Write(big)
	r := d.Wait(queueRX, rx[0])
	if !bytes.Equal(r.Bytes()[HeaderSize:], small[HeaderSize:]) || r.Bytes()[10] != 1 {
		t.Fatalf("small packet: %d bytes, num_buffers %d", r.Written, r.Bytes()[10])
	}
	// 4012 bytes over 1526-byte buffers: three of them.
	var got []byte
	first := d.Wait(queueRX, rx[1]).Bytes()
	if first[10] != 3 {
		t.Fatalf("num_buffers %d, want 3", first[10])
	}
	got = append(got, first...)
	got = append(got, d.Wait(queueRX, rx[2]).Bytes()...)
	got = append(got, d.Wait(queueRX, rx[3]).Bytes()...)
	if !bytes.Equal(got[HeaderSize:], big[HeaderSize:]) {
		t.Fatal("merged packet differs")
	}
}

// Without merged buffers a packet larger than the guest's buffer is
// dropped, and the next one still arrives.
func TestReceiveTooBig(t *testing.T) {
	tap, host := newTap(t)
	dev := New(tap, mac, slog.New(slog.DiscardHandler))
	d := virtiotest.New(t, dev)
	d.Init(virtio.FeatureVersion1|FeatMAC, 16, 16)
	a := d.Submit(queueRX, false, virtiotest.Buf{WriteLen: 1526})
	b := d.Submit(queueRX, false, virtiotest.Buf{WriteLen: 1526})
	host.Write(frame(3000, 1))
	host.Write(frame(100, 2))
	if r := d.Wait(queueRX, a); r.Written != 0 {
		t.Fatalf("oversized packet delivered (%d bytes)", r.Written)
	}
	if r := d.Wait(queueRX, b); int(r.Written) != HeaderSize+100 {
		t.Fatalf("next packet: %d bytes", r.Written)
	}
	if dev.Stats().Errors.Load() != 1 {
		t.Errorf("drops counted: %d", dev.Stats().Errors.Load())
	}
}
