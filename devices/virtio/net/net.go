// Package net is virtio-net (virtio 1.2 §5.1) over a TAP device: one
// receive and one transmit queue, the MAC from the configuration, and the
// checksum and segmentation offloads the guest negotiates passed through
// to the tap with its virtio-net header (IFF_VNET_HDR).
package net

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/ember-vmm/ember/devices/virtio"
)

// Feature bits (§5.1.3).
const (
	FeatCSUM      = 1 << 0
	FeatGuestCSUM = 1 << 1
	FeatMAC       = 1 << 5
	FeatGuestTSO4 = 1 << 7
	FeatGuestTSO6 = 1 << 8
	FeatHostTSO4  = 1 << 11
	FeatHostTSO6  = 1 << 12
	FeatMrgRxBuf  = 1 << 15
	FeatStatus    = 1 << 16
)

const (
	// HeaderSize is struct virtio_net_hdr_v1 (§5.1.6): what the tap is
	// told to use as well (TUNSETVNETHDRSZ).
	HeaderSize = 12
	// maxFrame is the largest packet either way: a 64 KiB GSO packet with
	// its Ethernet header and the virtio-net header.
	maxFrame  = 65550 + HeaderSize
	queueSize = 256
	queueRX   = 0
	queueTX   = 1
	linkUp    = 1
)

// Tap is the host side: a TAP device file opened with IFF_NO_PI and
// IFF_VNET_HDR (each read and write is one packet with its header).
// SetOffload tells it which offloads the guest accepts.
type Tap interface {
	io.ReadWriter
	// WriteVec writes one packet given in pieces, with one system call.
	WriteVec(segs [][]byte) (int, error)
	SetReadDeadline(time.Time) error
	SetOffload(csum, tso4, tso6 bool) error
}

// Device is one virtio-net interface.
type Device struct {
	tap    Tap
	mac    [6]byte
	log    *slog.Logger
	stats  virtio.Stats
	txSegs [][]byte // views of one packet in guest RAM
	txBuf  []byte   // made only for a packet in more pieces than writev takes
	rxBuf  []byte
	config [12]byte
}

// New returns a device on tap with the given MAC address.
func New(tap Tap, mac [6]byte, log *slog.Logger) *Device {
	d := &Device{tap: tap, mac: mac, log: log, txSegs: make([][]byte, 0, queueSize), rxBuf: make([]byte, maxFrame)}
	copy(d.config[0:6], mac[:])
	binary.LittleEndian.PutUint16(d.config[6:], linkUp)
	binary.LittleEndian.PutUint16(d.config[8:], 1) // max_virtqueue_pairs
	return d
}

func (*Device) Type() uint32 { return virtio.TypeNet }

// Features are the offloads a tap with a virtio-net header carries as they
// are: checksums and TCP segmentation both ways, merged receive buffers.
func (*Device) Features() uint64 {
	return FeatCSUM | FeatGuestCSUM | FeatMAC | FeatGuestTSO4 | FeatGuestTSO6 | FeatHostTSO4 | FeatHostTSO6 |
		FeatMrgRxBuf | FeatStatus
}
func (*Device) QueueMaxSizes() []uint16    { return []uint16{queueSize, queueSize} }
func (*Device) WriteConfig(uint64, []byte) {}
func (*Device) Reset()                     {}
func (d *Device) Stats() *virtio.Stats     { return &d.stats }

// ReadConfig is struct virtio_net_config (§5.1.4): mac, status, one pair.
func (d *Device) ReadConfig(off uint64, p []byte) {
	clear(p)
	if off < uint64(len(d.config)) {
		copy(p, d.config[off:])
	}
}

// Activate tells the tap what the guest can take and starts the workers.
func (d *Device) Activate(ctx context.Context, a *virtio.Activation) error {
	f := a.Features
	if err := d.tap.SetOffload(f&FeatGuestCSUM != 0, f&FeatGuestTSO4 != 0, f&FeatGuestTSO6 != 0); err != nil {
		return fmt.Errorf("virtio-net: tap offloads: %w", err)
	}
	if a.Queues[queueTX].Ready() {
		a.Go(func() error {
			return virtio.ServeChains(ctx, a, queueTX, d.transmit)
		})
	}
	if a.Queues[queueRX].Ready() {
		_ = d.tap.SetReadDeadline(time.Time{})
		context.AfterFunc(ctx, func() { _ = d.tap.SetReadDeadline(time.Unix(1, 0)) })
		a.Go(func() error { return d.receive(ctx, a, f&FeatMrgRxBuf != 0) })
	}
	return nil
}

// transmit sends one packet the guest queued (its virtio-net header,
// which the tap checks, and the frame) to the tap (§5.1.6.2).
func (d *Device) transmit(c *virtio.Chain) uint32 {
	n := c.ReadLen()
	if n <= HeaderSize || n > maxFrame {
		d.stats.GuestFaults.Add(1)
		d.log.Warn("virtio-net: transmit packet of a bad size", "bytes", n)
		return 0
	}
	// The packet goes from guest RAM to the tap without a copy, unless
	// the guest cut it into more pieces than one writev takes.
	var err error
	if segs := c.Reader().Next(n, d.txSegs[:0]); len(segs) <= virtio.IOVMax {
		_, err = d.tap.WriteVec(segs)
		clear(segs)
	} else {
		if d.txBuf == nil {
			d.txBuf = make([]byte, maxFrame)
		}
		b := d.txBuf[:n]
		_, _ = io.ReadFull(c.Reader(), b)
		_, err = d.tap.Write(b)
	}
	if err != nil {
		// A full or downed tap drops the packet, as a NIC would.
		d.stats.Errors.Add(1)
		return 0
	}
	d.stats.Requests.Add(1)
	d.stats.BytesRead.Add(n - HeaderSize)
	return 0
}

// receive moves packets from the tap into the guest's receive buffers. It
// reads a packet only when it can place it, so a guest that does not
// take packets leaves them queued in the tap (whose queue drops), never
// in ember.
func (d *Device) receive(ctx context.Context, a *virtio.Activation, merge bool) error {
	q := a.Queues[queueRX]
	var held []*virtio.Chain
	for ctx.Err() == nil {
		n, err := d.tap.Read(d.rxBuf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
				return nil
			}
			d.stats.Errors.Add(1)
			return fmt.Errorf("virtio-net: tap read: %w", err)
		}
		if n <= HeaderSize {
			continue
		}
		pkt := d.rxBuf[:n]
		for {
			var room uint64
			for _, c := range held {
				room += c.WriteLen()
			}
			if (merge && room >= uint64(n)) || (!merge && len(held) == 1) {
				break
			}
			c, err := q.Pop()
			if err != nil {
				a.Fault(err)
				return nil
			}
			if c == nil {
				a.Interrupt(queueRX)
				if a.Notified(ctx, queueRX) != nil {
					return nil
				}
				continue
			}
			if c.WriteLen() < HeaderSize {
				d.stats.GuestFaults.Add(1)
				q.Push(c, 0)
				continue
			}
			held = append(held, c)
		}
		if !merge && held[0].WriteLen() < uint64(n) {
			// The guest's buffer is too small for this packet: drop it.
			d.stats.Errors.Add(1)
			q.Push(held[0], 0)
			held = held[:0]
			a.Interrupt(queueRX)
			continue
		}
		// num_buffers (§5.1.6.4): how many chains the packet spans.
		binary.LittleEndian.PutUint16(pkt[10:12], uint16(len(held)))
		for _, c := range held {
			w := c.Writer()
			k := min(uint64(len(pkt)), w.Len())
			_, _ = w.Write(pkt[:k])
			pkt = pkt[k:]
			q.Push(c, w.Written())
			if len(pkt) == 0 {
				break
			}
		}
		held = held[:0]
		d.stats.BytesWritten.Add(uint64(n - HeaderSize))
		// With event indices a polling driver suppresses this itself.
		a.Interrupt(queueRX)
	}
	return nil
}
