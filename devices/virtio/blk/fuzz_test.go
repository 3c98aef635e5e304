package blk

import (
	"encoding/binary"
	"testing"

	"github.com/ember-vmm/ember/devices/virtio"
)

// FuzzRequest feeds arbitrary requests to the parser over a 64 KiB image:
// the first byte picks how the rest splits into readable bytes and a
// writable area. Nothing may panic or touch bytes outside the image.
func FuzzRequest(f *testing.F) {
	for _, typ := range []uint32{typeIn, typeOut, typeFlush, typeGetID, typeDiscard, typeWriteZeroes, 77} {
		h := header(typ, 3)
		f.Add(append([]byte{16}, h...), uint16(513))
	}
	seg := make([]byte, segmentSize)
	binary.LittleEndian.PutUint32(seg[8:], 8)
	f.Add(append(append([]byte{32}, header(typeWriteZeroes, 0)...), seg...), uint16(1))
	f.Fuzz(func(t *testing.T, data []byte, writeLen uint16) {
		if len(data) == 0 {
			return
		}
		dev := open(t, Options{Path: image(t, 64<<10, 0)})
		split := min(int(data[0]), len(data)-1)
		rest := data[1:]
		out := make([]byte, int(writeLen)%(128<<10))
		c := virtio.NewChain([][]byte{rest[:split], rest[split:]}, [][]byte{out})
		w := c.Writer()
		st := dev.serve(c.Reader(), w)
		if st > statusUnsupp {
			t.Fatalf("status %d", st)
		}
		if uint64(w.Written()) > c.WriteLen() {
			t.Fatalf("wrote %d of %d", w.Written(), c.WriteLen())
		}
	})
}
