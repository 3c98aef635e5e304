// Package rng is virtio-rng (virtio 1.2 §5.4): the guest's /dev/hwrng,
// fed from the host kernel's getrandom(2).
package rng

import (
	"context"
	"io"

	"golang.org/x/sys/unix"

	"github.com/ember-vmm/ember/devices/virtio"
)

// maxPerRequest bounds the entropy one request takes: a guest asking for
// gigabytes gets a short read, as the spec allows.
const maxPerRequest = 64 << 10

// Device is a virtio entropy source.
type Device struct {
	src   io.Reader
	stats virtio.Stats
	buf   []byte
}

// New returns a device reading from src (getrandom(2) if nil).
func New(src io.Reader) *Device {
	if src == nil {
		src = Source
	}
	return &Device{src: src, buf: make([]byte, 4096)}
}

func (*Device) Type() uint32                  { return virtio.TypeRNG }
func (*Device) Features() uint64              { return 0 }
func (*Device) QueueMaxSizes() []uint16       { return []uint16{256} }
func (*Device) ReadConfig(_ uint64, p []byte) { clear(p) }
func (*Device) WriteConfig(uint64, []byte)    {}
func (*Device) Reset()                        {}
func (d *Device) Stats() *virtio.Stats        { return &d.stats }

// Activate starts the request queue's worker.
func (d *Device) Activate(ctx context.Context, a *virtio.Activation) error {
	if !a.Queues[0].Ready() {
		return nil
	}
	a.Go(func() error { return virtio.ServeChains(ctx, a, 0, d.fill) })
	return nil
}

// fill fills one buffer with random bytes (§5.4.6).
func (d *Device) fill(c *virtio.Chain) uint32 {
	d.stats.Requests.Add(1)
	if c.ReadLen() > 0 {
		d.stats.GuestFaults.Add(1) // device-readable buffers mean nothing here
	}
	w := c.Writer()
	for n := min(w.Len(), maxPerRequest); n > 0; {
		k := min(n, uint64(len(d.buf)))
		if _, err := io.ReadFull(d.src, d.buf[:k]); err != nil {
			d.stats.Errors.Add(1)
			break
		}
		_, _ = w.Write(d.buf[:k])
		n -= k
	}
	d.stats.BytesWritten.Add(uint64(w.Written()))
	return w.Written()
}

// Source reads the kernel's CSPRNG, getrandom(2). crypto/rand reads the
// same source on Linux, but linking it brings the FIPS module (DRBG, AES,
// SHA-2/3) and its init work into the VMM process for nothing.
var Source io.Reader = getrandom{}

type getrandom struct{}

func (getrandom) Read(p []byte) (int, error) {
	for {
		n, err := unix.Getrandom(p, 0)
		if err != unix.EINTR {
			return n, err
		}
	}
}
