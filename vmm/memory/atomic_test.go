package memory

import "testing"

func TestAtomic16(t *testing.T) {
	b := make([]byte, 16)
	for off := 0; off <= 14; off++ {
		clear(b)
		if off+2 < 16 {
			b[off+2] = 0xaa // a neighbour that must survive
		}
		Store16(b, off, 0x1234)
		if b[off] != 0x34 || b[off+1] != 0x12 {
			t.Fatalf("off %d: bytes %x", off, b[off:off+2])
		}
		if off+2 < 16 && b[off+2] != 0xaa {
			t.Fatalf("off %d: neighbour clobbered", off)
		}
		if got := Load16(b, off); got != 0x1234 {
			t.Fatalf("off %d: load %#x", off, got)
		}
	}
	// At the very start and end of a slice whose edges are not aligned.
	s := b[1:7]
	Store16(s, 0, 0xbeef)
	Store16(s, 4, 0xcafe)
	if Load16(s, 0) != 0xbeef || Load16(s, 4) != 0xcafe {
		t.Fatal("edge fields")
	}
}
