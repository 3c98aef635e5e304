package vmm

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/ember-vmm/ember/vmm/memory"
)

// TestCodeAt walks a 4-level table by hand: a 4 KiB page and a 2 MiB
// page, a missing entry, an entry pointing outside RAM.
func TestCodeAt(t *testing.T) {
	mem, err := memory.NewFake([][2]uint64{{0, 8 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	put := func(gpa, v uint64) {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], v)
		mem.WriteAt(b[:], int64(gpa))
	}
	const pml4, pdpt, pd, pt = 0x1000, 0x2000, 0x3000, 0x4000
	va := uint64(0xffff_ffff_c000_1234)
	idx := func(shift uint) uint64 { return (va >> shift) & 0x1ff }
	put(pml4+8*idx(39), pdpt|1)
	put(pdpt+8*idx(30), pd|1)
	put(pd+8*idx(21), pt|1)
	put(pt+8*idx(12), 0x5000|1)
	mem.WriteAt([]byte{0xeb, 0xfe}, 0x5234)
	const pg, la57 = 1 << 31, 1 << 12
	if got := codeAt(mem, pg, 0, pml4, va, 2); !bytes.Equal(got, []byte{0xeb, 0xfe}) {
		t.Fatalf("4 KiB page: %x", got)
	}
	if got := codeAt(mem, pg, 0, pml4, va+0x1000-0x234-1, 8); len(got) != 1 {
		t.Fatalf("read past the page's end: %d bytes", len(got))
	}
	// A 2 MiB page at 4 MiB.
	va2 := uint64(0xffff_ffff_c020_0010)
	put(pd+8*((va2>>21)&0x1ff), 0x40_0000|1|1<<7)
	mem.WriteAt([]byte{0x90}, 0x40_0010)
	if got := codeAt(mem, pg, 0, pml4, va2, 1); !bytes.Equal(got, []byte{0x90}) {
		t.Fatalf("2 MiB page: %x", got)
	}
	if got := codeAt(mem, pg, 0, pml4, 0x1000, 4); got != nil {
		t.Fatalf("unmapped address: %x", got)
	}
	put(pt+8*idx(12), 0x7fff_f000|1) // outside RAM
	if got := codeAt(mem, pg, 0, pml4, va, 2); got != nil {
		t.Fatalf("page outside RAM: %x", got)
	}
	if got := codeAt(mem, pg, la57, pml4, va, 2); got != nil {
		t.Fatalf("LA57: %x", got)
	}
}
