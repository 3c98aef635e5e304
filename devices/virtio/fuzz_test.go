package virtio

import (
	"encoding/binary"
	"io"
	"testing"

	"github.com/ember-vmm/ember/vmm/memory"
)

// FuzzQueue lets the fuzzer write the descriptor table, the available
// ring and a data area of a 64-entry queue with indirect descriptors and
// event indices on; popping must never panic, loop or return a chain the
// rules forbid.
func FuzzQueue(f *testing.F) {
	seed := make([]byte, 16*64+4+128)
	// One good chain: descriptor 0 readable, NEXT to 1 writable.
	binary.LittleEndian.PutUint64(seed[0:], 0x3000)
	binary.LittleEndian.PutUint32(seed[8:], 16)
	binary.LittleEndian.PutUint16(seed[12:], descNext)
	binary.LittleEndian.PutUint16(seed[14:], 1)
	binary.LittleEndian.PutUint64(seed[16:], 0x3100)
	binary.LittleEndian.PutUint32(seed[24:], 32)
	binary.LittleEndian.PutUint16(seed[28:], descWrite)
	binary.LittleEndian.PutUint16(seed[16*64+2:], 1) // avail idx
	f.Add(seed)                                      // more seeds in testdata/fuzz/FuzzQueue
	f.Fuzz(func(t *testing.T, data []byte) {
		mem, err := memory.NewFake([][2]uint64{{0, 1 << 17}})
		if err != nil {
			t.Fatal(err)
		}
		const size = 64
		q := NewQueue(mem)
		q.Size, q.Desc, q.Avail, q.Used = size, 0x1000, 0x1000+16*size, 0x2000
		if err := q.Activate(size, true, true); err != nil {
			t.Fatal(err)
		}
		// Descriptor table and avail ring are contiguous; the rest of the
		// input lands where descriptors may point (indirect tables too).
		_, _ = mem.WriteAt(data[:min(len(data), 16*size+6+2*size)], 0x1000)
		if len(data) > 16*size+6+2*size {
			rest := data[16*size+6+2*size:]
			_, _ = mem.WriteAt(rest[:min(len(rest), 0x10000)], 0x3000)
		}
		for range 2 * size {
			c, err := q.Pop()
			if err != nil || c == nil {
				return
			}
			if c.ReadLen()+c.WriteLen() > 1<<32-1 {
				t.Fatalf("chain of %d bytes", c.ReadLen()+c.WriteLen())
			}
			n, _ := io.Copy(io.Discard, c.Reader())
			if uint64(n) != c.ReadLen() {
				t.Fatalf("read %d of %d readable bytes", n, c.ReadLen())
			}
			w := c.Writer()
			w.Skip(w.Len())
			q.Push(c, w.Written())
			q.NeedsInterrupt()
		}
	})
}
