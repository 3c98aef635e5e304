package vmm

import (
	"encoding/binary"

	"github.com/ember-vmm/ember/vmm/memory"
)

// codeAt returns up to n bytes of guest code at the virtual address va,
// translated through the guest's 4-level page tables at cr3, or nil (not
// paged, not present, LA57, or outside RAM). It is for reports of a
// stopped guest: every table entry is read through guest RAM's bounds.
func codeAt(mem *memory.Memory, cr0, cr4, cr3, va uint64, n int) []byte {
	const (
		present  = 1
		huge     = 1 << 7
		addrMask = 0x000f_ffff_ffff_f000
		cr0PG    = 1 << 31
		cr4LA57  = 1 << 12
	)
	if cr0&cr0PG == 0 {
		b, _ := mem.Slice(va, uint64(n))
		return b
	}
	if cr4&cr4LA57 != 0 {
		return nil
	}
	table := cr3 & addrMask
	for level, shift := 4, uint(39); level >= 1; level, shift = level-1, shift-9 {
		raw, err := mem.Slice(table+8*((va>>shift)&0x1ff), 8)
		if err != nil {
			return nil
		}
		e := binary.LittleEndian.Uint64(raw)
		if e&present == 0 {
			return nil
		}
		if level == 1 || (level <= 3 && e&huge != 0) {
			size := uint64(1) << shift
			pa := e&addrMask&^(size-1) | va&(size-1)
			// Stay within the page: the next one may map elsewhere.
			k := min(uint64(n), size-va&(size-1))
			b, err := mem.Slice(pa, k)
			if err != nil {
				return nil
			}
			return b
		}
		table = e & addrMask
	}
	return nil
}
