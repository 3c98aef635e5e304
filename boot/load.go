package boot

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/ember-vmm/ember/vmm/memory"
)

// Params are the inputs of Load.
type Params struct {
	Kernel     []byte // the whole kernel file
	KernelPath string // for messages
	Initrd     []byte // may be empty
	Cmdline    string
	CPUs       int
	Mem        *memory.Memory
}

var elfMagic = []byte{0x7f, 'E', 'L', 'F'}

// Detect tells a bzImage from an ELF vmlinux and validates its headers, so
// a bad file is refused before any VM exists.
func Detect(kernel []byte) (Protocol, error) {
	if len(kernel) >= 4 && bytes.Equal(kernel[:4], elfMagic) {
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
// p.Mem and returns the boot CPU state.
func Load(p Params) (*Entry, error) {
	if p.CPUs < 1 || p.CPUs > 254 {
		return nil, fmt.Errorf("cpus %d out of range 1..254", p.CPUs)
	}
	if len(p.Cmdline)+1 > MaxCmdline {
		return nil, fmt.Errorf("command line is %d bytes, at most %d", len(p.Cmdline), MaxCmdline-1)
	}
	lowEnd := p.Mem.Regions()[0].Size()
	if lowEnd < 16<<20 {
		return nil, fmt.Errorf("%w: guest RAM below 4 GiB is %d MiB, need at least 16", ErrNoRoom, lowEnd>>20)
	}
	var e *Entry
	var err error
	if len(p.Kernel) >= 4 && bytes.Equal(p.Kernel[:4], elfMagic) {
		e, err = loadPVH(p)
	} else {
		e, err = loadBzImage(p)
	}
	if err != nil {
		return nil, err
	}
	if err := writeGDT(p.Mem); err != nil {
		return nil, err
	}
	if err := writeMPTable(p.Mem, p.CPUs); err != nil {
		return nil, err
	}
	return e, nil
}

// placeInitrd puts the initrd page-aligned as high as possible below limit
// and above floor.
func placeInitrd(m *memory.Memory, initrd []byte, floor, limit uint64) (uint64, error) {
	if len(initrd) == 0 {
		return 0, nil
	}
	size := uint64(len(initrd))
	if size > limit || (limit-size)&^0xfff < floor {
		return 0, fmt.Errorf("initrd (%d MiB) %w between %#x and %#x", size>>20, ErrNoRoom, floor, limit)
	}
	addr := (limit - size) &^ 0xfff
	if _, err := m.WriteAt(initrd, int64(addr)); err != nil {
		return 0, fmt.Errorf("initrd: %w", err)
	}
	return addr, nil
}

func writeCmdline(m *memory.Memory, cmdline string) error {
	b := make([]byte, len(cmdline)+1)
	copy(b, cmdline)
	_, err := m.WriteAt(b, AddrCmdline)
	return err
}

// e820 types (ACPI 6.4 §15).
const (
	e820RAM      = 1
	e820Reserved = 2
)

type e820Entry struct {
	Addr, Size uint64
	Type       uint32
}

// e820Map describes RAM: conventional memory below the EBDA, the reserved
// legacy area holding the MP table, then every RAM region above 1 MiB.
func e820Map(m *memory.Memory) []e820Entry {
	regs := m.Regions()
	es := []e820Entry{
		{0, EBDAStart, e820RAM},
		{EBDAStart, HighMemStart - EBDAStart, e820Reserved},
		{HighMemStart, regs[0].Size() - HighMemStart, e820RAM},
	}
	for _, r := range regs[1:] {
		es = append(es, e820Entry{r.GPA, r.Size(), e820RAM})
	}
	return es
}

// writeGDT writes the boot GDT (entries per Intel SDM vol. 3 §3.4.5).
func writeGDT(m *memory.Memory) error {
	gdt := []uint64{
		0,
		0x00cf9b000000ffff, // 0x08: code, 32-bit, flat
		0x00af9b000000ffff, // 0x10: code, 64-bit
		0x00cf93000000ffff, // 0x18: data, flat
		0x008f8b000000ffff, // 0x20: TSS, busy
	}
	b := make([]byte, 8*len(gdt))
	for i, d := range gdt {
		binary.LittleEndian.PutUint64(b[i*8:], d)
	}
	if _, err := m.WriteAt(b, AddrGDT); err != nil {
		return err
	}
	_, err := m.WriteAt(make([]byte, 8), AddrIDT)
	return err
}

func flat(sel uint16, typ uint8, l, db uint8) Segment {
	return Segment{Base: 0, Limit: 0xffffffff, Selector: sel, Type: typ, Present: 1, S: 1, L: l, DB: db, G: 1}
}

var tss = Segment{Base: 0, Limit: 0xffffffff, Selector: SelTSS, Type: 0xb, Present: 1, G: 1}

func tables() (Table, Table) {
	return Table{Base: AddrGDT, Limit: 5*8 - 1}, Table{Base: AddrIDT, Limit: 0}
}
