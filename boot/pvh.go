package boot

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/ember-vmm/ember/boot/elf64"
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

// elfKernel is what booting an ELF vmlinux needs: its PVH entry and
// loadable segments.
type elfKernel struct {
	entry uint32
	loads []elf64.Prog
}

// Bounds on what is read to find the PVH note: notes are a few KiB.
const (
	maxNoteBytes    = 1 << 20
	maxNoteSections = 64
)

// parseELF reads an x86-64 ELF vmlinux's program headers and finds its PVH
// entry note, reading nothing else (elf64 never inflates sections).
func parseELF(r io.ReaderAt, size int64) (*elfKernel, error) {
	f, err := elf64.Open(r, size)
	if err != nil {
		if errors.Is(err, elf64.ErrFormat) {
			return nil, errorf(ErrUnsupported, "%v", err)
		}
		return nil, err
	}
	if f.Machine != elf64.MachineX86_64 {
		return nil, errorf(ErrUnsupported, "ELF file is for machine %d, need EM_X86_64 (62)", f.Machine)
	}
	ek := &elfKernel{}
	found := false
	for _, p := range f.Progs {
		switch p.Type {
		case elf64.PTLoad:
			if p.Filesz > p.Memsz {
				return nil, errorf(ErrUnsupported, "ELF segment at %#x has file size %d > memory size %d", p.Paddr, p.Filesz, p.Memsz)
			}
			if !f.InFile(p) {
				return nil, errorf(ErrTruncated, "truncated: ELF segment at file offset %d+%d is past the end (%d bytes)", p.Off, p.Filesz, size)
			}
			if p.Paddr+p.Memsz < p.Paddr {
				return nil, errorf(ErrUnsupported, "ELF segment at %#x+%#x wraps around", p.Paddr, p.Memsz)
			}
			ek.loads = append(ek.loads, p)
		case elf64.PTNote:
			if found {
				continue
			}
			if !f.InFile(p) {
				return nil, errorf(ErrTruncated, "truncated: ELF note at file offset %d+%d is past the end (%d bytes)", p.Off, p.Filesz, size)
			}
			b, err := f.ProgData(p, maxNoteBytes)
			if err != nil {
				return nil, errorf(ErrUnsupported, "ELF note segment: %v", err)
			}
			if e, ok, err := findPVHNote(b); err != nil {
				return nil, err
			} else if ok {
				ek.entry, found = e, true
			}
		}
	}
	if len(ek.loads) == 0 {
		return nil, errorf(ErrUnsupported, "ELF file has no loadable segments")
	}
	if !found {
		// Some linkers leave the note only in a SHT_NOTE section.
		if ek.entry, found, err = sectionNote(f); err != nil {
			return nil, err
		}
	}
	// Overlapping segments make no sense in a kernel, and refusing them
	// bounds the copying a hostile file can cause to the size of RAM.
	sorted := slices.Clone(ek.loads)
	slices.SortFunc(sorted, func(a, b elf64.Prog) int { return cmp.Compare(a.Paddr, b.Paddr) })
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

// sectionNote looks for the PVH note in (a bounded number of) plain
// SHT_NOTE sections.
func sectionNote(f *elf64.File) (uint32, bool, error) {
	ss, err := f.Sections()
	if err != nil {
		return 0, false, errorf(ErrUnsupported, "ELF sections: %v", err)
	}
	seen := 0
	for _, s := range ss {
		if s.Type != elf64.SHTNote || s.Flags&elf64.SHFCompressed != 0 {
			continue
		}
		if seen++; seen > maxNoteSections {
			break
		}
		b, err := f.Data(s, maxNoteBytes)
		if err != nil {
			continue // an oversized or broken note section is not the PVH note
		}
		if e, ok, err := findPVHNote(b); err != nil || ok {
			return e, ok, err
		}
	}
	return 0, false, nil
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

// planPVH checks the ELF segments fit in RAM above 1 MiB.
func planPVH(pl *plan) error {
	name := pl.p.Kernel.Name
	var end uint64
	for _, s := range pl.p.Kernel.elf.loads {
		if s.Paddr < HighMemStart {
			return errorf(ErrUnsupported, "kernel %s: ELF segment at %#x is below 1 MiB, where the boot tables live", name, s.Paddr)
		}
		if s.Paddr+s.Memsz > pl.ramEnd {
			return errorf(ErrNoRoom, "kernel %s: ELF segment [%#x, %#x) is outside guest RAM below 4 GiB (ends at %#x)",
				name, s.Paddr, s.Paddr+s.Memsz, pl.ramEnd)
		}
		end = max(end, s.Paddr+s.Memsz)
	}
	pl.end = end
	pl.initrdLimit, pl.initrdLimitName = pl.ramEnd, "end of RAM below 4 GiB"
	return nil
}

// writePVH copies the segments from the file, zeroes their .bss, and writes
// hvm_start_info and the GDT.
func writePVH(pl *plan) (*Entry, error) {
	p, ek, m := pl.p, pl.p.Kernel.elf, pl.p.Mem
	for _, s := range ek.loads {
		if err := copyToGuest(m, s.Paddr, p.Kernel.r, int64(s.Off), s.Filesz); err != nil {
			return nil, fmt.Errorf("kernel %s: ELF segment: %w", p.Kernel.Name, err)
		}
		if err := zeroGuest(m, s.Paddr+s.Filesz, s.Memsz-s.Filesz); err != nil {
			return nil, fmt.Errorf("kernel %s: ELF segment: %w", p.Kernel.Name, err)
		}
	}
	if err := writeStartInfo(p, pl.rsdp, pl.initrd); err != nil {
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
		KernelEnd: pl.end,
		Initrd:    [2]uint64{pl.initrd, uint64(p.InitrdSize)},
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
	es := e820Map(p.RAM)
	si := make([]byte, addrMemmap-AddrStartInfo+len(es)*memmapEntrySize)
	le := binary.LittleEndian
	le.PutUint32(si[siMagic:], startInfoMagic)
	le.PutUint32(si[siVersion:], startInfoVersion)
	le.PutUint32(si[siFlags:], 0)
	le.PutUint64(si[siCmdlinePaddr:], AddrCmdline)
	le.PutUint64(si[siRSDPPaddr:], rsdp)
	le.PutUint64(si[siMemmapPaddr:], addrMemmap)
	le.PutUint32(si[siMemmapEntries:], uint32(len(es)))
	if p.InitrdSize > 0 {
		le.PutUint32(si[siNrModules:], 1)
		le.PutUint64(si[siModlistPaddr:], addrModlist)
		o := addrModlist - AddrStartInfo
		le.PutUint64(si[o+modPaddr:], initrd)
		le.PutUint64(si[o+modSize:], uint64(p.InitrdSize))
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
