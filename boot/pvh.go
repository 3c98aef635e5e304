package boot

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
)

// Xen PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h and
// xen/include/public/elfnote.h).
const (
	xenElfnotePhys32Entry = 18
	startInfoMagic        = 0x336ec578
	startInfoSize         = 56
	modlistEntrySize      = 32
	memmapEntrySize       = 24
	// Offsets inside hvm_start_info.
	siMagic         = 0
	siVersion       = 4
	siNrModules     = 12
	siModlistPaddr  = 16
	siCmdlinePaddr  = 24
	siRSDPPaddr     = 32
	siMemmapPaddr   = 40
	siMemmapEntries = 48

	addrModlist = AddrStartInfo + 0x40
	addrMemmap  = AddrStartInfo + 0x80
)

type elfKernel struct {
	entry uint32
	loads []*elf.Prog
	f     *elf.File
}

// parseELF opens an x86-64 ELF vmlinux and finds its PVH entry note.
// debug/elf is not hardened against every malformed file, so a panic in it
// becomes an error.
func parseELF(k []byte) (ek *elfKernel, err error) {
	defer func() {
		if r := recover(); r != nil {
			ek, err = nil, fmt.Errorf("%w: malformed ELF file (%v)", ErrUnsupported, r)
		}
	}()
	f, err := elf.NewFile(bytes.NewReader(k))
	if err != nil {
		return nil, fmt.Errorf("%w: malformed ELF file: %v", ErrUnsupported, err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("%w: ELF %s %s, need 64-bit x86-64", ErrUnsupported, f.Class, f.Machine)
	}
	ek = &elfKernel{f: f}
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_LOAD:
			if p.Filesz > p.Memsz {
				return nil, fmt.Errorf("%w: ELF segment has file size %d > memory size %d", ErrUnsupported, p.Filesz, p.Memsz)
			}
			if p.Off+p.Filesz < p.Off || p.Off+p.Filesz > uint64(len(k)) {
				return nil, fmt.Errorf("%w: ELF segment at file offset %d+%d is past the end (%d bytes)", ErrTruncated, p.Off, p.Filesz, len(k))
			}
			ek.loads = append(ek.loads, p)
		case elf.PT_NOTE:
			if p.Off+p.Filesz < p.Off || p.Off+p.Filesz > uint64(len(k)) {
				return nil, fmt.Errorf("%w: ELF note past the end of the file", ErrTruncated)
			}
			if e, ok := findPVHNote(k[p.Off : p.Off+p.Filesz]); ok {
				ek.entry = e
			}
		}
	}
	if len(ek.loads) == 0 {
		return nil, fmt.Errorf("%w: ELF file has no loadable segments", ErrUnsupported)
	}
	if ek.entry == 0 {
		return nil, fmt.Errorf("%w: ELF vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); boot its bzImage instead", ErrUnsupported)
	}
	return ek, nil
}

// findPVHNote walks ELF notes (namesz, descsz, type, name, desc; each
// 4-byte aligned) for Xen's PHYS32_ENTRY.
func findPVHNote(b []byte) (uint32, bool) {
	for len(b) >= 12 {
		nsz := uint64(binary.LittleEndian.Uint32(b[0:]))
		dsz := uint64(binary.LittleEndian.Uint32(b[4:]))
		typ := binary.LittleEndian.Uint32(b[8:])
		nEnd := 12 + (nsz+3)&^3
		dEnd := nEnd + (dsz+3)&^3
		if nsz > uint64(len(b)) || dsz > uint64(len(b)) || dEnd > uint64(len(b)) {
			return 0, false
		}
		name := b[12 : 12+nsz]
		if typ == xenElfnotePhys32Entry && bytes.Equal(bytes.TrimRight(name, "\x00"), []byte("Xen")) && dsz >= 4 {
			return binary.LittleEndian.Uint32(b[nEnd:]), true
		}
		b = b[dEnd:]
	}
	return 0, false
}

func loadPVH(p Params) (*Entry, error) {
	ek, err := parseELF(p.Kernel)
	if err != nil {
		return nil, err
	}
	m := p.Mem
	var end uint64
	for _, s := range ek.loads {
		if s.Paddr < HighMemStart {
			return nil, fmt.Errorf("%w: ELF segment at %#x is below 1 MiB", ErrUnsupported, s.Paddr)
		}
		dst, err := m.Slice(s.Paddr, s.Memsz)
		if err != nil {
			return nil, fmt.Errorf("ELF segment at %#x+%#x: %w", s.Paddr, s.Memsz, ErrNoRoom)
		}
		n := copy(dst, p.Kernel[s.Off:s.Off+s.Filesz])
		clear(dst[n:])
		end = max(end, s.Paddr+s.Memsz)
	}
	if err := writeCmdline(m, p.Cmdline); err != nil {
		return nil, err
	}
	lowEnd := m.Regions()[0].Size()
	initrd, err := placeInitrd(m, p.Initrd, (end+0xfff)&^0xfff, lowEnd)
	if err != nil {
		return nil, err
	}
	es := e820Map(m)
	si := make([]byte, addrMemmap-AddrStartInfo+len(es)*memmapEntrySize)
	binary.LittleEndian.PutUint32(si[siMagic:], startInfoMagic)
	binary.LittleEndian.PutUint32(si[siVersion:], 1)
	binary.LittleEndian.PutUint64(si[siCmdlinePaddr:], AddrCmdline)
	binary.LittleEndian.PutUint64(si[siMemmapPaddr:], addrMemmap)
	binary.LittleEndian.PutUint32(si[siMemmapEntries:], uint32(len(es)))
	if len(p.Initrd) > 0 {
		binary.LittleEndian.PutUint32(si[siNrModules:], 1)
		binary.LittleEndian.PutUint64(si[siModlistPaddr:], addrModlist)
		o := addrModlist - AddrStartInfo
		binary.LittleEndian.PutUint64(si[o:], initrd)
		binary.LittleEndian.PutUint64(si[o+8:], uint64(len(p.Initrd)))
	}
	for i, e := range es {
		o := addrMemmap - AddrStartInfo + i*memmapEntrySize
		binary.LittleEndian.PutUint64(si[o:], e.Addr)
		binary.LittleEndian.PutUint64(si[o+8:], e.Size)
		binary.LittleEndian.PutUint32(si[o+16:], e.Type)
	}
	if _, err := m.WriteAt(si, AddrStartInfo); err != nil {
		return nil, err
	}
	gdt, idt := tables()
	return &Entry{
		Protocol:  PVH,
		KernelEnd: end,
		Initrd:    [2]uint64{initrd, uint64(len(p.Initrd))},
		BSP: CPUState{
			RIP: uint64(ek.entry), RBX: AddrStartInfo, RSP: AddrStack, RFLAGS: 2,
			CR0: cr0PE | cr0ET,
			CS:  flat(SelCode32, 0xb, 0, 1),
			DS:  flat(SelData, 0x3, 0, 1),
			TR:  tss,
			GDT: gdt, IDT: idt,
		},
	}, nil
}
