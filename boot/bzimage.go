package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/ember-vmm/ember/vmm/memory"
)

// Setup header offsets within the bzImage and the zero page
// (Documentation/arch/x86/boot.rst, "The real-mode kernel header";
// arch/x86/include/uapi/asm/bootparam.h).
const (
	offSetupSects    = 0x1f1
	offBootFlag      = 0x1fe
	offJump          = 0x200
	offHeader        = 0x202
	offVersion       = 0x206
	offTypeOfLoader  = 0x210
	offLoadflags     = 0x211
	offRamdiskImage  = 0x218
	offRamdiskSize   = 0x21c
	offHeapEndPtr    = 0x224
	offCmdLinePtr    = 0x228
	offInitrdAddrMax = 0x22c
	offKernelAlign   = 0x230
	offRelocatable   = 0x234
	offXLoadflags    = 0x236
	offCmdlineSize   = 0x238
	offPayloadOffset = 0x248
	offPayloadLength = 0x24c
	offPrefAddress   = 0x258
	offInitSize      = 0x260

	// boot_params fields outside the setup header.
	zpACPIRSDP      = 0x070
	zpExtRamdisk    = 0x0c0
	zpExtRamdiskSz  = 0x0c4
	zpExtCmdLinePtr = 0x0c8
	zpE820Entries   = 0x1e8
	zpE820Table     = 0x2d0
	zpE820Max       = 128
	zpSize          = 4096

	magicHdrS    = 0x53726448 // "HdrS"
	loadedHigh   = 1 << 0
	canUseHeap   = 1 << 7
	xlfKernel64  = 1 << 0
	minVersion   = 0x0206
	kernelLoad   = HighMemStart
	entry64Delta = 0x200
)

// setup is the validated setup header of a bzImage.
type setup struct {
	sects       int
	version     uint16
	initrdMax   uint64
	cmdlineSize uint32
	initSize    uint64
	hdrEnd      int // end offset of the setup header in the file
	kernel      []byte
}

func parseSetup(k []byte) (*setup, error) {
	if len(k) < offInitSize+4 {
		if len(k) >= offHeader+4 && binary.LittleEndian.Uint32(k[offHeader:]) == magicHdrS {
			return nil, fmt.Errorf("%w: %d bytes is shorter than a bzImage setup header", ErrTruncated, len(k))
		}
		return nil, ErrNotKernel
	}
	if binary.LittleEndian.Uint32(k[offHeader:]) != magicHdrS || binary.LittleEndian.Uint16(k[offBootFlag:]) != 0xaa55 {
		return nil, ErrNotKernel
	}
	s := &setup{version: binary.LittleEndian.Uint16(k[offVersion:])}
	if s.version < minVersion {
		return nil, fmt.Errorf("%w: boot protocol %d.%02d is too old (need 2.06 or newer)", ErrUnsupported, s.version>>8, s.version&0xff)
	}
	if k[offLoadflags]&loadedHigh == 0 {
		return nil, fmt.Errorf("%w: a zImage (not loaded high); need a bzImage", ErrUnsupported)
	}
	if s.version < 0x020c || binary.LittleEndian.Uint16(k[offXLoadflags:])&xlfKernel64 == 0 {
		return nil, fmt.Errorf("%w: no 64-bit entry point (XLF_KERNEL_64); need an x86-64 kernel", ErrUnsupported)
	}
	s.sects = int(k[offSetupSects])
	if s.sects == 0 {
		s.sects = 4
	}
	s.hdrEnd = offHeader + int(k[offJump+1])
	// The header ends where the jump at 0x200 lands; keep it inside the
	// zero page's hdr field (which ends at 0x290).
	s.hdrEnd = min(max(s.hdrEnd, offInitSize+4), 0x290)
	setupEnd := (s.sects + 1) * 512
	if setupEnd >= len(k) {
		return nil, fmt.Errorf("%w: setup header says %d setup sectors but the file has only %d bytes", ErrTruncated, s.sects, len(k))
	}
	s.kernel = k[setupEnd:]
	// The compressed payload must be wholly inside the file.
	po := uint64(binary.LittleEndian.Uint32(k[offPayloadOffset:]))
	pl := uint64(binary.LittleEndian.Uint32(k[offPayloadLength:]))
	if po+pl > uint64(len(s.kernel)) {
		return nil, fmt.Errorf("%w: the compressed kernel ends at byte %d but the file has %d", ErrTruncated, uint64(setupEnd)+po+pl, len(k))
	}
	s.initrdMax = uint64(binary.LittleEndian.Uint32(k[offInitrdAddrMax:]))
	s.cmdlineSize = binary.LittleEndian.Uint32(k[offCmdlineSize:])
	s.initSize = uint64(binary.LittleEndian.Uint32(k[offInitSize:]))
	if s.initSize < uint64(len(s.kernel)) {
		s.initSize = uint64(len(s.kernel))
	}
	return s, nil
}

func loadBzImage(p Params) (*Entry, error) {
	s, err := parseSetup(p.Kernel)
	if err != nil {
		return nil, err
	}
	m := p.Mem
	lowEnd := m.Regions()[0].Size()
	kernelEnd := kernelLoad + s.initSize
	if kernelEnd > lowEnd {
		return nil, fmt.Errorf("kernel needs %d MiB from 1 MiB: %w", s.initSize>>20, ErrNoRoom)
	}
	if uint32(len(p.Cmdline)) > s.cmdlineSize {
		return nil, fmt.Errorf("command line is %d bytes, this kernel accepts at most %d", len(p.Cmdline), s.cmdlineSize)
	}
	if _, err := m.WriteAt(s.kernel, kernelLoad); err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	if err := writeCmdline(m, p.Cmdline); err != nil {
		return nil, err
	}
	limit := min(s.initrdMax+1, lowEnd)
	initrd, err := placeInitrd(m, p.Initrd, (kernelEnd+0xfff)&^0xfff, limit)
	if err != nil {
		return nil, err
	}

	zp := make([]byte, zpSize)
	copy(zp[offSetupSects:s.hdrEnd], p.Kernel[offSetupSects:s.hdrEnd])
	zp[offTypeOfLoader] = 0xff
	zp[offLoadflags] |= canUseHeap
	binary.LittleEndian.PutUint16(zp[offHeapEndPtr:], 0xfe00)
	binary.LittleEndian.PutUint32(zp[offCmdLinePtr:], AddrCmdline)
	binary.LittleEndian.PutUint32(zp[offRamdiskImage:], uint32(initrd))
	binary.LittleEndian.PutUint32(zp[offRamdiskSize:], uint32(len(p.Initrd)))
	binary.LittleEndian.PutUint32(zp[zpExtRamdisk:], uint32(initrd>>32))
	binary.LittleEndian.PutUint32(zp[zpExtRamdiskSz:], uint32(uint64(len(p.Initrd))>>32))
	es := e820Map(m)
	zp[zpE820Entries] = byte(len(es))
	for i, e := range es {
		o := zpE820Table + i*20
		binary.LittleEndian.PutUint64(zp[o:], e.Addr)
		binary.LittleEndian.PutUint64(zp[o+8:], e.Size)
		binary.LittleEndian.PutUint32(zp[o+16:], e.Type)
	}
	if _, err := m.WriteAt(zp, AddrZeroPage); err != nil {
		return nil, err
	}
	if err := writePageTables(m); err != nil {
		return nil, err
	}
	gdt, idt := tables()
	return &Entry{
		Protocol:  Linux64,
		KernelEnd: kernelEnd,
		Initrd:    [2]uint64{initrd, uint64(len(p.Initrd))},
		BSP: CPUState{
			RIP: kernelLoad + entry64Delta, RSP: AddrStack, RSI: AddrZeroPage, RFLAGS: 2,
			CR0:  cr0PE | cr0ET | cr0NE | cr0PG,
			CR3:  AddrPML4,
			CR4:  cr4PAE,
			EFER: eferLME | eferLMA,
			CS:   flat(SelCode64, 0xb, 1, 0),
			DS:   flat(SelData, 0x3, 0, 1),
			TR:   tss,
			GDT:  gdt, IDT: idt,
		},
	}, nil
}

// Control register bits (Intel SDM vol. 3 §2.5).
const (
	cr0PE   = 1 << 0
	cr0ET   = 1 << 4
	cr0NE   = 1 << 5
	cr0PG   = 1 << 31
	cr4PAE  = 1 << 5
	eferLME = 1 << 8
	eferLMA = 1 << 10
)

// writePageTables identity-maps the first 4 GiB with 2 MiB pages, which
// covers the kernel, zero page, command line and initrd as the 64-bit boot
// protocol requires.
func writePageTables(m *memory.Memory) error {
	b := make([]byte, 4096*6)
	binary.LittleEndian.PutUint64(b[0:], AddrPDPT|3) // PML4[0]: present, writable
	for i := uint64(0); i < 4; i++ {
		binary.LittleEndian.PutUint64(b[4096+i*8:], (AddrPD+i*4096)|3)
	}
	for i := uint64(0); i < 4*512; i++ {
		binary.LittleEndian.PutUint64(b[8192+i*8:], i<<21|0x83) // present, writable, 2 MiB
	}
	_, err := m.WriteAt(b, AddrPML4)
	return err
}

// zeroPageOffsets is pinned by a test against bootparam.h.
var zeroPageOffsets = map[string]int{
	"acpi_rsdp_addr": zpACPIRSDP, "ext_ramdisk_image": zpExtRamdisk, "ext_cmd_line_ptr": zpExtCmdLinePtr,
	"e820_entries": zpE820Entries, "hdr": offSetupSects, "e820_table": zpE820Table,
}
