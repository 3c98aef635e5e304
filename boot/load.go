package boot

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/ember-vmm/ember/vmm/memory"
)

// Params are the inputs of Load.
type Params struct {
	Kernel     []byte // the whole kernel file
	KernelPath string // names the kernel in errors
	Initrd     []byte // may be empty
	Cmdline    string // the complete command line
	CPUs       int    // 1..MaxCPUs
	Mem        *memory.Memory
	// ACPI also writes ACPI tables (RSDP, XSDT, FADT, MADT, DSDT).
	ACPI bool
	// AML is appended to the DSDT's body (device declarations); optional.
	AML []byte
}

// isELF tells an ELF file by its magic number.
func isELF(k []byte) bool { return len(k) >= 4 && string(k[:4]) == "\x7fELF" }

// Detect tells a bzImage from an ELF vmlinux and validates its headers, so
// a bad file is refused before any VM exists. Its errors do not name the
// file; the caller does.
func Detect(kernel []byte) (Protocol, error) {
	if isELF(kernel) {
		if _, err := parseELF(kernel); err != nil {
			return 0, err
		}
		return PVH, nil
	}
	if _, err := parseSetup(kernel); err != nil {
		return 0, err
	}
	return Linux64, nil
}

// Load writes the kernel, initrd, command line and platform tables into
// p.Mem and returns the boot CPU state. Errors about the kernel file start
// with p.KernelPath.
func Load(p Params) (*Entry, error) {
	if err := checkParams(p); err != nil {
		return nil, err
	}
	var rsdp uint64
	if p.ACPI {
		var err error
		if rsdp, err = writeACPI(p.Mem, p.CPUs, p.AML); err != nil {
			return nil, fmt.Errorf("ACPI tables: %w", err)
		}
	}
	var e *Entry
	var err error
	if isELF(p.Kernel) {
		e, err = loadPVH(p, rsdp)
	} else {
		e, err = loadBzImage(p, rsdp)
	}
	if err != nil {
		return nil, err
	}
	e.RSDP = rsdp
	if err := writeMPTable(p.Mem, p.CPUs); err != nil {
		return nil, fmt.Errorf("MP table: %w", err)
	}
	return e, nil
}

func checkParams(p Params) error {
	if p.Mem == nil || len(p.Mem.Regions()) == 0 || p.Mem.Regions()[0].GPA != 0 {
		return errorf(ErrParams, "no guest RAM at address 0")
	}
	if p.CPUs < 1 || p.CPUs > MaxCPUs {
		return errorf(ErrParams, "cpus %d out of range 1..%d", p.CPUs, MaxCPUs)
	}
	if low := lowEnd(p.Mem); low < MinLowMem {
		return errorf(ErrNoRoom, "memory too small: %d MiB of RAM below the 32-bit hole, need at least %d MiB",
			low>>20, MinLowMem>>20)
	}
	if len(p.Cmdline)+1 > MaxCmdline {
		return errorf(ErrCmdline, "command line is %d bytes, at most %d are supported", len(p.Cmdline), MaxCmdline-1)
	}
	if strings.IndexByte(p.Cmdline, 0) >= 0 {
		return errorf(ErrCmdline, "command line contains a NUL byte")
	}
	return nil
}

// kernelName is how errors name the kernel file.
func kernelName(p Params) string {
	if p.KernelPath == "" {
		return "kernel"
	}
	return p.KernelPath
}

// lowEnd is the end of the RAM region that starts at 0 (at most the start of
// the 32-bit MMIO hole).
func lowEnd(m *memory.Memory) uint64 { return m.Regions()[0].Size() }

// placeInitrd puts the initrd page-aligned as high as possible below limit
// (exclusive) and at or above floor.
func placeInitrd(m *memory.Memory, initrd []byte, floor, limit uint64, limitName string) (uint64, error) {
	if len(initrd) == 0 {
		return 0, nil
	}
	size := uint64(len(initrd))
	if size > limit || (limit-size)&^(memory.PageSize-1) < floor {
		return 0, errorf(ErrNoRoom, "initrd (%d MiB) does not fit between the kernel's end %#x and %s %#x",
			(size+(1<<20)-1)>>20, floor, limitName, limit)
	}
	addr := (limit - size) &^ (memory.PageSize - 1)
	if _, err := m.WriteAt(initrd, int64(addr)); err != nil {
		return 0, fmt.Errorf("initrd: %w", err)
	}
	return addr, nil
}

func writeCmdline(m *memory.Memory, cmdline string) error {
	b := make([]byte, len(cmdline)+1)
	copy(b, cmdline)
	if _, err := m.WriteAt(b, AddrCmdline); err != nil {
		return fmt.Errorf("command line: %w", err)
	}
	return nil
}

// e820 types (ACPI 6.4 §15, "System Address Map Interfaces").
const (
	e820RAM      = 1
	e820Reserved = 2
	e820Max      = 128 // E820_MAX_ENTRIES_ZEROPAGE
)

type e820Entry struct {
	Addr, Size uint64
	Type       uint32
}

// e820Map describes RAM: conventional memory below the EBDA, the reserved
// legacy area holding the MP and ACPI tables, then every RAM region from
// 1 MiB on (the caller has checked the low region is larger than 1 MiB).
func e820Map(m *memory.Memory) []e820Entry {
	regs := m.Regions()
	es := []e820Entry{
		{0, EBDAStart, e820RAM},
		{EBDAStart, HighMemStart - EBDAStart, e820Reserved},
		{HighMemStart, regs[0].Size() - HighMemStart, e820RAM},
	}
	for _, r := range regs[1:] {
		if len(es) == e820Max {
			break
		}
		es = append(es, e820Entry{r.GPA, r.Size(), e820RAM})
	}
	return es
}

// descriptor encodes s as an 8-byte GDT entry (Intel SDM vol. 3 §3.4.5).
// For system segments in long mode the caller adds the upper 8 bytes.
func (s Segment) descriptor() uint64 {
	limit := uint64(s.Limit)
	if s.G != 0 {
		limit >>= 12
	}
	access := uint64(s.Type&0xf) | uint64(s.S&1)<<4 | uint64(s.DPL&3)<<5 | uint64(s.Present&1)<<7
	flags := uint64(s.AVL&1) | uint64(s.L&1)<<1 | uint64(s.DB&1)<<2 | uint64(s.G&1)<<3
	return limit&0xffff | (s.Base&0xffffff)<<16 | access<<40 | (limit>>16&0xf)<<48 | flags<<52 | (s.Base>>24&0xff)<<56
}

// Segment types (Intel SDM vol. 3 §3.4.5.1, Table 3-1 and 3-2).
const (
	typeCodeRXA = 0xb // code, execute/read, accessed
	typeDataRWA = 0x3 // data, read/write, accessed
	typeTSSBusy = 0xb // 32/64-bit TSS, busy
	tssSize     = 104
)

func flat(sel uint16, typ, l, db uint8) Segment {
	return Segment{Limit: 0xffffffff, Selector: sel, Type: typ, Present: 1, S: 1, L: l, DB: db, G: 1}
}

func tssSegment(sel uint16) Segment {
	return Segment{Base: AddrTSS, Limit: tssSize - 1, Selector: sel, Type: typeTSSBusy, Present: 1}
}

// writeGDT writes the GDT, an empty IDT and a zeroed TSS, and returns the
// descriptor-table registers. segs[i] goes to selector i*8 (index 0 must be
// the null segment); a TSS in long mode takes two slots.
func writeGDT(m *memory.Memory, segs []Segment, longTSS bool) (gdt, idt Table, err error) {
	var b []byte
	for _, s := range segs {
		if s == (Segment{}) {
			b = binary.LittleEndian.AppendUint64(b, 0)
			continue
		}
		b = binary.LittleEndian.AppendUint64(b, s.descriptor())
		if s.S == 0 && longTSS {
			b = binary.LittleEndian.AppendUint64(b, s.Base>>32)
		}
	}
	if AddrGDT+len(b) > AddrIDT {
		return gdt, idt, fmt.Errorf("GDT of %d bytes overlaps the IDT", len(b))
	}
	if _, err := m.WriteAt(b, AddrGDT); err != nil {
		return gdt, idt, err
	}
	if _, err := m.WriteAt(make([]byte, 8), AddrIDT); err != nil {
		return gdt, idt, err
	}
	tss := make([]byte, tssSize)
	binary.LittleEndian.PutUint16(tss[0x66:], tssSize) // I/O map base: no bitmap
	if _, err := m.WriteAt(tss, AddrTSS); err != nil {
		return gdt, idt, err
	}
	return Table{Base: AddrGDT, Limit: uint16(len(b) - 1)}, Table{Base: AddrIDT, Limit: 0}, nil
}
