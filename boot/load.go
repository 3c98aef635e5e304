package boot

import (
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

// Range is a span of guest-physical addresses.
type Range struct {
	Start, Size uint64
}

// End is the first address after r.
func (r Range) End() uint64 { return r.Start + r.Size }

// Platform is what the machine tells the loader about itself; ember's
// platform table derives it. Load writes it into the MP table and, with
// ACPI set, the ACPI tables.
type Platform struct {
	// LAPIC and IOAPIC are the interrupt controllers' MMIO addresses.
	LAPIC, IOAPIC uint32
	// ACPI, when set, makes Load write ACPI tables.
	ACPI *ACPI
}

// ACPI is the content of the ACPI tables beyond what Load derives (the
// MADT comes from CPUs and Platform).
type ACPI struct {
	// DSDT is the AML body of the DSDT (device declarations, \_S5).
	DSDT []byte
	// SleepControl and SleepStatus are the FADT's hardware-reduced sleep
	// registers (one-byte I/O ports).
	SleepControl, SleepStatus uint16
}

// Params are the inputs of Load and Check.
type Params struct {
	Kernel *Kernel
	// Initrd holds InitrdSize bytes of initramfs; nil for none.
	Initrd     io.ReaderAt
	InitrdSize int64
	Cmdline    string // the complete command line
	CPUs       int    // 1..MaxCPUs
	// RAM lists guest RAM in ascending order; the first range starts at 0.
	RAM []Range
	// Mem is guest RAM, written at guest-physical addresses; Check needs
	// none.
	Mem      io.WriterAt
	Platform Platform
}

// plan is where everything goes; Check computes it, Load writes it.
type plan struct {
	p               Params
	ramEnd          uint64 // end of the RAM range at 0
	load, end       uint64 // kernel load address and end of its footprint
	initrdLimit     uint64 // the initrd must end at or below this
	initrdLimitName string
	initrd          uint64
	acpi            []byte // the ACPI blob at AddrACPI, RSDP first
	rsdp            uint64
	mp              []byte // the MP configuration table
}

// Check validates p and computes where the kernel, initrd and tables go,
// without guest memory: everything Load would refuse, Check refuses, so a
// bad combination of kernel, RAM, initrd and command line is reported
// before any VM exists.
func Check(p Params) error {
	_, err := newPlan(p)
	return err
}

func newPlan(p Params) (*plan, error) {
	if err := checkParams(p); err != nil {
		return nil, err
	}
	pl := &plan{p: p, ramEnd: p.RAM[0].End()}
	var err error
	switch p.Kernel.Protocol {
	case Linux64:
		err = planBzImage(pl)
	case PVH:
		err = planPVH(pl)
	default:
		err = errorf(ErrParams, "kernel %s: unknown protocol", p.Kernel.Name)
	}
	if err != nil {
		return nil, err
	}
	floor := (pl.end + pageSize - 1) &^ (pageSize - 1)
	if pl.initrd, err = placeInitrd(uint64(p.InitrdSize), floor, pl.initrdLimit, pl.initrdLimitName); err != nil {
		return nil, err
	}
	if a := p.Platform.ACPI; a != nil {
		if pl.acpi, err = acpiBlob(p.CPUs, p.Platform, a); err != nil {
			return nil, fmt.Errorf("ACPI tables: %w", err)
		}
		pl.rsdp = AddrACPI
	}
	if pl.mp, err = mpConfigTable(p.CPUs, p.Platform); err != nil {
		return nil, fmt.Errorf("MP table: %w", err)
	}
	return pl, nil
}

// Load writes the kernel, initrd, command line and platform tables into
// p.Mem and returns the boot CPU's state. Errors about the kernel file
// name it.
func Load(p Params) (*Entry, error) {
	pl, err := newPlan(p)
	if err != nil {
		return nil, err
	}
	if p.Mem == nil {
		return nil, errorf(ErrParams, "no guest memory to load into")
	}
	if pl.acpi != nil {
		if _, err := p.Mem.WriteAt(pl.acpi, AddrACPI); err != nil {
			return nil, fmt.Errorf("ACPI tables: %w", err)
		}
	}
	if err := writeCmdline(p.Mem, p.Cmdline); err != nil {
		return nil, err
	}
	if p.InitrdSize > 0 {
		if err := copyToGuest(p.Mem, pl.initrd, p.Initrd, 0, uint64(p.InitrdSize)); err != nil {
			return nil, fmt.Errorf("initrd: %w", err)
		}
	}
	var e *Entry
	if p.Kernel.Protocol == PVH {
		e, err = writePVH(pl)
	} else {
		e, err = writeBzImage(pl)
	}
	if err != nil {
		return nil, err
	}
	e.RSDP = pl.rsdp
	if err := writeMPTable(p.Mem, pl.mp); err != nil {
		return nil, fmt.Errorf("MP table: %w", err)
	}
	return e, nil
}

func checkParams(p Params) error {
	if p.Kernel == nil {
		return errorf(ErrParams, "no kernel")
	}
	if len(p.RAM) == 0 || p.RAM[0].Start != 0 {
		return errorf(ErrParams, "no guest RAM at address 0")
	}
	for i := 1; i < len(p.RAM); i++ {
		if p.RAM[i].Start < p.RAM[i-1].End() || p.RAM[i].End() < p.RAM[i].Start {
			return errorf(ErrParams, "guest RAM ranges overlap or are out of order")
		}
	}
	if p.CPUs < 1 || p.CPUs > MaxCPUs {
		return errorf(ErrParams, "cpus %d out of range 1..%d", p.CPUs, MaxCPUs)
	}
	if low := p.RAM[0].Size; low < MinLowMem {
		return errorf(ErrNoRoom, "memory too small: %d MiB of RAM below the 32-bit hole, need at least %d MiB",
			low>>20, MinLowMem>>20)
	}
	if len(p.Cmdline)+1 > MaxCmdline {
		return errorf(ErrCmdline, "command line is %d bytes, at most %d are supported", len(p.Cmdline), MaxCmdline-1)
	}
	if strings.IndexByte(p.Cmdline, 0) >= 0 {
		return errorf(ErrCmdline, "command line contains a NUL byte")
	}
	if p.InitrdSize < 0 || (p.InitrdSize > 0 && p.Initrd == nil) {
		return errorf(ErrParams, "initrd of %d bytes without a reader", p.InitrdSize)
	}
	return nil
}

// pageSize aligns the initrd.
const pageSize = 4096

// placeInitrd puts size bytes page-aligned as high as possible below limit
// (exclusive) and at or above floor.
func placeInitrd(size, floor, limit uint64, limitName string) (uint64, error) {
	if size == 0 {
		return 0, nil
	}
	if size > limit || (limit-size)&^(pageSize-1) < floor {
		return 0, errorf(ErrNoRoom, "initrd (%d MiB) does not fit between the kernel's end %#x and %s %#x",
			(size+(1<<20)-1)>>20, floor, limitName, limit)
	}
	return (limit - size) &^ (pageSize - 1), nil
}

func writeCmdline(m io.WriterAt, cmdline string) error {
	b := make([]byte, len(cmdline)+1)
	copy(b, cmdline)
	if _, err := m.WriteAt(b, AddrCmdline); err != nil {
		return fmt.Errorf("command line: %w", err)
	}
	return nil
}

// copyChunk bounds the buffer used to copy files into guest memory: small,
// so loading a large initrd leaves no large buffer in the VMM's heap (a
// copy costs one pread per chunk).
const copyChunk = 64 << 10

// slicer is guest memory that can lend a window of itself: files are then
// read straight into guest RAM, with no buffer and no second copy.
type slicer interface {
	Slice(gpa, n uint64) ([]byte, error)
}

// copyToGuest copies n bytes at off in r to guest address gpa.
func copyToGuest(m io.WriterAt, gpa uint64, r io.ReaderAt, off int64, n uint64) error {
	if n == 0 {
		return nil
	}
	if s, ok := m.(slicer); ok {
		// A range that does not fit one region (or at all) takes the
		// buffered path, which reports it.
		if dst, err := s.Slice(gpa, n); err == nil {
			if k, err := r.ReadAt(dst, off); uint64(k) < n {
				if err == io.EOF || err == nil {
					err = io.ErrUnexpectedEOF
				}
				return fmt.Errorf("reading %d bytes at %d: %w", n, off, err)
			}
			return nil
		}
	}
	buf := make([]byte, min(n, copyChunk))
	for done := uint64(0); done < n; {
		b := buf[:min(uint64(len(buf)), n-done)]
		if k, err := r.ReadAt(b, off+int64(done)); k < len(b) {
			if err == io.EOF || err == nil {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("reading %d bytes at %d: %w", len(b), off+int64(done), err)
		}
		if _, err := m.WriteAt(b, int64(gpa+done)); err != nil {
			return err
		}
		done += uint64(len(b))
	}
	return nil
}

// zeroGuest clears n bytes at gpa (guest RAM starts zeroed, but Load does
// not rely on it).
func zeroGuest(m io.WriterAt, gpa, n uint64) error {
	if n == 0 {
		return nil
	}
	if s, ok := m.(slicer); ok {
		if dst, err := s.Slice(gpa, n); err == nil {
			clear(dst)
			return nil
		}
	}
	buf := make([]byte, min(n, copyChunk))
	for done := uint64(0); done < n; {
		b := buf[:min(uint64(len(buf)), n-done)]
		if _, err := m.WriteAt(b, int64(gpa+done)); err != nil {
			return err
		}
		done += uint64(len(b))
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
// legacy area holding the MP and ACPI tables, then every RAM range from
// 1 MiB on (checkParams has made sure the low range is larger than 1 MiB).
func e820Map(ram []Range) []e820Entry {
	es := []e820Entry{
		{0, EBDAStart, e820RAM},
		{EBDAStart, HighMemStart - EBDAStart, e820Reserved},
		{HighMemStart, ram[0].Size - HighMemStart, e820RAM},
	}
	for _, r := range ram[1:] {
		if len(es) == e820Max {
			break
		}
		es = append(es, e820Entry{r.Start, r.Size, e820RAM})
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
func writeGDT(m io.WriterAt, segs []Segment, longTSS bool) (gdt, idt Table, err error) {
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
