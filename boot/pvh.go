package boot

import (
	"bytes"
	"cmp"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"slices"
)

// Xen PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h,
// xen/include/public/elfnote.h, xen docs/misc/pvh.pandoc).
const (
	xenElfnotePhys32Entry = 18
	startInfoMagic        = 0x336ec578
	startInfoVersion      = 1 // has memmap_paddr/memmap_entries
	startInfoSize         = 56
	modlistEntrySize      = 32
	memmapEntrySize       = 24

	// Offsets inside struct hvm_start_info.
	siMagic         = 0
	siVersion       = 4
	siFlags         = 8
	siNrModules     = 12
	siModlistPaddr  = 16
	siCmdlinePaddr  = 24
	siRSDPPaddr     = 32
	siMemmapPaddr   = 40
	siMemmapEntries = 48

	// Offsets inside struct hvm_modlist_entry and hvm_memmap_table_entry.
	modPaddr    = 0
	modSize     = 8
	modCmdline  = 16
	memmapAddr  = 0
	memmapSize  = 8
	memmapType  = 16
	addrModlist = AddrStartInfo + 0x40
	addrMemmap  = AddrStartInfo + 0x80
)

type elfKernel struct {
	entry uint32
	loads []*elf.Prog
}

// parseELF opens an x86-64 ELF vmlinux and finds its PVH entry note.
// debug/elf is not hardened against every malformed file, so a panic in it
// becomes an error.
func parseELF(k []byte) (ek *elfKernel, err error) {
	defer func() {
		if r := recover(); r != nil {
			ek, err = nil, errorf(ErrUnsupported, "malformed ELF file (%v)", r)
		}
	}()
	f, err := elf.NewFile(bytes.NewReader(k))
	if err != nil {
		return nil, errorf(ErrUnsupported, "malformed ELF file: %v", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return nil, errorf(ErrUnsupported, "ELF file is %s %s, need ELFCLASS64 EM_X86_64", f.Class, f.Machine)
	}
	inFile := func(off, n uint64) bool { return off+n >= off && off+n <= uint64(len(k)) }
	ek = &elfKernel{}
	found := false
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_LOAD:
			if p.Filesz > p.Memsz {
				return nil, errorf(ErrUnsupported, "ELF segment at %#x has file size %d > memory size %d", p.Paddr, p.Filesz, p.Memsz)
			}
			if !inFile(p.Off, p.Filesz) {
				return nil, errorf(ErrTruncated, "truncated: ELF segment at file offset %d+%d is past the end (%d bytes)", p.Off, p.Filesz, len(k))
			}
			if p.Paddr+p.Memsz < p.Paddr {
				return nil, errorf(ErrUnsupported, "ELF segment at %#x+%#x wraps around", p.Paddr, p.Memsz)
			}
			ek.loads = append(ek.loads, p)
		case elf.PT_NOTE:
			if !inFile(p.Off, p.Filesz) {
				return nil, errorf(ErrTruncated, "truncated: ELF note at file offset %d+%d is past the end (%d bytes)", p.Off, p.Filesz, len(k))
			}
			if e, ok, err := findPVHNote(k[p.Off : p.Off+p.Filesz]); err != nil {
				return nil, err
			} else if ok && !found {
				ek.entry, found = e, true
			}
		}
	}
	// Some linkers leave the note only in a SHT_NOTE section.
	for _, s := range f.Sections {
		if found || s.Type != elf.SHT_NOTE || !inFile(s.Offset, s.Size) {
			continue
		}
		e, ok, err := findPVHNote(k[s.Offset : s.Offset+s.Size])
		if err != nil {
			return nil, err
		}
		ek.entry, found = e, ok
	}
	if len(ek.loads) == 0 {
		return nil, errorf(ErrUnsupported, "ELF file has no loadable segments")
	}
	// Overlapping segments make no sense in a kernel, and refusing them
	// bounds the copying a hostile file can cause to the size of RAM.
	sorted := slices.Clone(ek.loads)
	slices.SortFunc(sorted, func(a, b *elf.Prog) int { return cmp.Compare(a.Paddr, b.Paddr) })
	for i := 1; i < len(sorted); i++ {
		if a, b := sorted[i-1], sorted[i]; b.Paddr < a.Paddr+a.Memsz {
			return nil, errorf(ErrUnsupported, "ELF segments [%#x, %#x) and [%#x, %#x) overlap",
				a.Paddr, a.Paddr+a.Memsz, b.Paddr, b.Paddr+b.Memsz)
		}
	}
	if !found {
		return nil, ErrNoPVHEntry
	}
	inside := false
	for _, p := range ek.loads {
		if uint64(ek.entry) >= p.Paddr && uint64(ek.entry)-p.Paddr < p.Memsz {
			inside = true
		}
	}
	if !inside {
		return nil, errorf(ErrUnsupported, "PVH entry %#x is outside every loadable ELF segment", ek.entry)
	}
	return ek, nil
}

// findPVHNote walks ELF notes (namesz, descsz, type, name, desc; name and
// desc each padded to 4 bytes) for Xen's PHYS32_ENTRY. The value is a 32-bit
// physical address, stored in 4 or (Linux's _ASM_PTR) 8 bytes.
func findPVHNote(b []byte) (entry uint32, ok bool, err error) {
	for len(b) >= 12 {
		nsz := uint64(binary.LittleEndian.Uint32(b[0:]))
		dsz := uint64(binary.LittleEndian.Uint32(b[4:]))
		typ := binary.LittleEndian.Uint32(b[8:])
		nEnd := 12 + (nsz+3)&^3
		dEnd := nEnd + (dsz+3)&^3
		if nsz > uint64(len(b)) || dsz > uint64(len(b)) || dEnd > uint64(len(b)) {
			return 0, false, nil // a malformed tail ends the walk
		}
		name := b[12 : 12+nsz]
		if typ == xenElfnotePhys32Entry && string(bytes.TrimRight(name, "\x00")) == "Xen" {
			switch dsz {
			case 4:
				return binary.LittleEndian.Uint32(b[nEnd:]), true, nil
			case 8:
				v := binary.LittleEndian.Uint64(b[nEnd:])
				if v > 0xffffffff {
					return 0, false, errorf(ErrUnsupported, "PVH entry %#x is above 4 GiB", v)
				}
				return uint32(v), true, nil
			}
			return 0, false, errorf(ErrUnsupported, "PVH entry note has %d bytes, want 4 or 8", dsz)
		}
		b = b[dEnd:]
	}
	return 0, false, nil
}

func loadPVH(p Params, rsdp uint64) (*Entry, error) {
	name := kernelName(p)
	ek, err := parseELF(p.Kernel)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	m := p.Mem
	ramEnd := lowEnd(m)
	var end uint64
	for _, s := range ek.loads {
		if s.Paddr < HighMemStart {
			return nil, errorf(ErrUnsupported, "%s: ELF segment at %#x is below 1 MiB, where the boot tables live", name, s.Paddr)
		}
		if s.Paddr+s.Memsz > ramEnd {
			return nil, errorf(ErrNoRoom, "%s: ELF segment [%#x, %#x) is outside guest RAM below 4 GiB (ends at %#x)",
				name, s.Paddr, s.Paddr+s.Memsz, ramEnd)
		}
		dst, err := m.Slice(s.Paddr, s.Memsz)
		if err != nil {
			return nil, fmt.Errorf("%s: ELF segment: %w", name, err)
		}
		n := copy(dst, p.Kernel[s.Off:s.Off+s.Filesz])
		clear(dst[n:]) // .bss
		end = max(end, s.Paddr+s.Memsz)
	}
	if err := writeCmdline(m, p.Cmdline); err != nil {
		return nil, err
	}
	initrd, err := placeInitrd(m, p.Initrd, (end+4095)&^4095, ramEnd, "end of RAM below 4 GiB")
	if err != nil {
		return nil, err
	}
	if err := writeStartInfo(p, rsdp, initrd); err != nil {
		return nil, err
	}
	// pvh.pandoc: 32-bit protected mode, paging off, flat 4 GiB CS and
	// DS/ES/SS, a valid TR, EBX = start_info.
	cs, ds, tr := flat(SelCode32, typeCodeRXA, 0, 1), flat(SelPVHData, typeDataRWA, 0, 1), tssSegment(SelPVHTSS)
	gdt, idt, err := writeGDT(m, []Segment{{}, cs, ds, tr}, false)
	if err != nil {
		return nil, fmt.Errorf("GDT: %w", err)
	}
	return &Entry{
		Protocol:  PVH,
		KernelEnd: end,
		Initrd:    [2]uint64{initrd, uint64(len(p.Initrd))},
		BSP: CPUState{
			RIP: uint64(ek.entry), RBX: AddrStartInfo, RSP: AddrStack, RFLAGS: rflagsFixed,
			CR0: cr0PE | cr0ET,
			CS:  cs, DS: ds, TR: tr,
			GDT: gdt, IDT: idt,
		},
	}, nil
}

// writeStartInfo writes hvm_start_info with its module list (the initrd)
// and memory map.
func writeStartInfo(p Params, rsdp, initrd uint64) error {
	es := e820Map(p.Mem)
	si := make([]byte, addrMemmap-AddrStartInfo+len(es)*memmapEntrySize)
	le := binary.LittleEndian
	le.PutUint32(si[siMagic:], startInfoMagic)
	le.PutUint32(si[siVersion:], startInfoVersion)
	le.PutUint32(si[siFlags:], 0)
	le.PutUint64(si[siCmdlinePaddr:], AddrCmdline)
	le.PutUint64(si[siRSDPPaddr:], rsdp)
	le.PutUint64(si[siMemmapPaddr:], addrMemmap)
	le.PutUint32(si[siMemmapEntries:], uint32(len(es)))
	if len(p.Initrd) > 0 {
		le.PutUint32(si[siNrModules:], 1)
		le.PutUint64(si[siModlistPaddr:], addrModlist)
		o := addrModlist - AddrStartInfo
		le.PutUint64(si[o+modPaddr:], initrd)
		le.PutUint64(si[o+modSize:], uint64(len(p.Initrd)))
		le.PutUint64(si[o+modCmdline:], 0)
	}
	for i, e := range es {
		o := addrMemmap - AddrStartInfo + i*memmapEntrySize
		le.PutUint64(si[o+memmapAddr:], e.Addr)
		le.PutUint64(si[o+memmapSize:], e.Size)
		le.PutUint32(si[o+memmapType:], e.Type)
	}
	if _, err := p.Mem.WriteAt(si, AddrStartInfo); err != nil {
		return fmt.Errorf("PVH start info: %w", err)
	}
	return nil
}
