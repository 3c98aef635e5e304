package vsock

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/ember-vmm/ember/devices/virtio"
)

// FuzzPacket hands arbitrary guest packets to the device (a sequence: the
// input is cut into packets at the lengths their headers claim). Nothing
// may panic, and what ember holds stays within its bounds.
func FuzzPacket(f *testing.F) {
	pkt := func(op uint16, src, dst, n uint32, payload string) []byte {
		b := make([]byte, hdrSize)
		(&header{srcCID: guestCID, dstCID: hostCID, srcPort: src, dstPort: dst, len: n, typ: typeStream, op: op, bufAlloc: 4096}).encode(b)
		return append(b, payload...)
	}
	f.Add(pkt(opRequest, 1, 2, 0, ""))
	f.Add(append(pkt(opRW, 1, 2, 3, "abc"), pkt(opShutdown, 1, 2, 0, "")...))
	f.Add(pkt(opRW, 1, 2, 1<<20, "short"))
	f.Add(append(pkt(opCreditRequest, 9, 9, 0, ""), pkt(opRst, 9, 9, 0, "")...))
	f.Fuzz(func(t *testing.T, data []byte) {
		dev, err := Open(Options{CID: guestCID, UDS: filepath.Join(t.TempDir(), "v")}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		defer dev.Close()
		dev.act = &virtio.Activation{Go: func(func() error) {}, Kick: func(int) {}}
		dev.ctx = context.Background()
		for len(data) > 0 {
			n := len(data)
			if n >= hdrSize {
				var h header
				h.decode(data)
				n = min(len(data), hdrSize+int(min(h.len, 1<<17)))
			}
			c := virtio.NewChain([][]byte{data[:n]}, nil)
			data = data[n:]
			var h header
			r := c.Reader()
			if r.Len() < hdrSize {
				continue
			}
			var hb [hdrSize]byte
			_, _ = r.Read(hb[:])
			h.decode(hb[:])
			dev.handle(&h, r)
		}
		dev.mu.Lock()
		defer dev.mu.Unlock()
		if len(dev.ctl) > maxCtl || len(dev.conns) > maxConns {
			t.Fatalf("%d control packets, %d connections", len(dev.ctl), len(dev.conns))
		}
		for _, c := range dev.conns {
			if len(c.in) > bufAlloc {
				t.Fatalf("%d bytes buffered for one connection", len(c.in))
			}
		}
	})
}
