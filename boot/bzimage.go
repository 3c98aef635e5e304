package boot

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
)

// Setup header offsets within the bzImage and the zero page
// (Documentation/arch/x86/boot.rst, "The Real-Mode Kernel Header";
// arch/x86/include/uapi/asm/bootparam.h, struct setup_header).
const (
	offSetupSects    = 0x1f1
	offSyssize       = 0x1f4
	offVidMode       = 0x1fa
	offBootFlag      = 0x1fe
	offJump          = 0x200
	offHeader        = 0x202
	offVersion       = 0x206
	offTypeOfLoader  = 0x210
	offLoadflags     = 0x211
	offCode32Start   = 0x214
	offRamdiskImage  = 0x218
	offRamdiskSize   = 0x21c
	offCmdLinePtr    = 0x228
	offInitrdAddrMax = 0x22c
	offKernelAlign   = 0x230
	offRelocatable   = 0x234
	offXLoadflags    = 0x236
	offCmdlineSize   = 0x238
	offPayloadOffset = 0x248
	offPayloadLength = 0x24c
	offSetupData     = 0x250
	offPrefAddress   = 0x258
	offInitSize      = 0x260
	// offHdrMax is where struct setup_header's room in boot_params ends
	// (boot.rst: "permanently limited to 144 bytes" from the jump at 0x200).
	offHdrMax = 0x290

	// boot_params fields outside the setup header (bootparam.h, zero-page.rst).
	zpACPIRSDP      = 0x070
	zpExtRamdisk    = 0x0c0
	zpExtRamdiskSz  = 0x0c4
	zpExtCmdLinePtr = 0x0c8
	zpE820Entries   = 0x1e8
	zpE820Table     = 0x2d0
	zpE820EntrySize = 20
	zpSize          = 4096

	magicHdrS    = 0x53726448 // "HdrS"
	bootFlag     = 0xaa55
	loadedHigh   = 1 << 0
	xlfKernel64  = 1 << 0
	minVersion   = 0x0206
	xlfVersion   = 0x020c // xloadflags, hence XLF_KERNEL_64, exist from 2.12
	vidModeNorm  = 0xffff
	loaderAnon   = 0xff // type_of_loader: no assigned ID
	entry64Delta = 0x200
)

// setup is the validated setup header of a bzImage.
type setup struct {
	version     uint16
	relocatable bool
	align       uint64
	pref        uint64
	initrdMax   uint64
	cmdlineSize uint64
	initSize    uint64
	hdr         []byte // the file's first hdrEnd bytes (setup header included)
	kernelOff   int64  // the protected-mode part: file offset and length
	kernelLen   uint64
}

func u16(b []byte, off int) uint16 { return binary.LittleEndian.Uint16(b[off:]) }
func u32(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }
func u64(b []byte, off int) uint64 { return binary.LittleEndian.Uint64(b[off:]) }

// parseSetup validates the header of a size-byte bzImage for the 64-bit
// boot protocol. It reads the first offHdrMax bytes only.
func parseSetup(r io.ReaderAt, size int64) (*setup, error) {
	k := make([]byte, min(size, offHdrMax))
	if n, err := r.ReadAt(k, 0); n < len(k) {
		return nil, fmt.Errorf("reading the setup header: %w", err)
	}
	if len(k) < offHeader+4 || u32(k, offHeader) != magicHdrS {
		return nil, ErrNotKernel
	}
	if len(k) < offInitSize+4 {
		return nil, errorf(ErrTruncated, "truncated: %d bytes is shorter than a bzImage setup header", size)
	}
	if f := u16(k, offBootFlag); f != bootFlag {
		return nil, errorf(ErrUnsupported, "boot_flag is %#04x, want 0xaa55", f)
	}
	s := &setup{version: u16(k, offVersion)}
	v := fmt.Sprintf("%d.%02d", s.version>>8, s.version&0xff)
	if s.version < minVersion {
		return nil, errorf(ErrUnsupported, "boot protocol %s too old (need >= 2.06 with 64-bit entry XLF_KERNEL_64)", v)
	}
	if k[offLoadflags]&loadedHigh == 0 {
		return nil, errorf(ErrUnsupported, "a zImage (loadflags has no LOADED_HIGH); need a bzImage")
	}
	if s.version < xlfVersion || u16(k, offXLoadflags)&xlfKernel64 == 0 {
		return nil, errorf(ErrUnsupported, "boot protocol %s kernel has no 64-bit entry point (XLF_KERNEL_64); need an x86-64 bzImage", v)
	}
	sects := int64(k[offSetupSects])
	if sects == 0 {
		sects = 4
	}
	setupEnd := (sects + 1) * 512
	if setupEnd >= size {
		return nil, errorf(ErrTruncated, "truncated: setup header says %d setup sectors but file has %d bytes", sects, size)
	}
	s.kernelOff, s.kernelLen = setupEnd, uint64(size-setupEnd)
	// syssize counts 16-byte paragraphs of the protected-mode part (2.04+).
	if sys := uint64(u32(k, offSyssize)) * 16; sys > s.kernelLen {
		return nil, errorf(ErrTruncated, "truncated: setup header says the kernel is %d bytes after the setup but the file has %d",
			sys, s.kernelLen)
	}
	// The compressed payload (2.08+) must be wholly inside the file.
	po, pl := uint64(u32(k, offPayloadOffset)), uint64(u32(k, offPayloadLength))
	if po+pl > s.kernelLen {
		return nil, errorf(ErrTruncated, "truncated: the compressed kernel ends at byte %d but the file has %d",
			uint64(setupEnd)+po+pl, size)
	}
	// The header ends where the jump at 0x200 lands (boot.rst, "64-bit Boot
	// Protocol"); it must cover the fields read here and stay in its room.
	hdrEnd := min(max(offHeader+int(k[offJump+1]), offInitSize+4), offHdrMax)
	s.hdr = k[:hdrEnd]

	s.relocatable = k[offRelocatable] != 0
	s.align = uint64(u32(k, offKernelAlign))
	s.pref = u64(k, offPrefAddress)
	s.initrdMax = uint64(u32(k, offInitrdAddrMax))
	s.cmdlineSize = uint64(u32(k, offCmdlineSize))
	s.initSize = max(uint64(u32(k, offInitSize)), s.kernelLen)
	if s.relocatable && (s.align == 0 || bits.OnesCount64(s.align) != 1) {
		return nil, errorf(ErrUnsupported, "kernel_alignment %#x is not a power of two", s.align)
	}
	return s, nil
}

// placement picks where the protected-mode part goes and where the kernel
// runs (boot.rst, init_size: runtime_start = align_up(load_address,
// kernel_alignment) if relocatable, else pref_address). A relocatable kernel
// is loaded at pref_address, as the spec asks, so it decompresses in place;
// x86-64 kernels never run below pref_address (LOAD_PHYSICAL_ADDR) anyway.
func (s *setup) placement(ramEnd uint64) (load, end uint64, err error) {
	pref := s.pref
	if pref < HighMemStart {
		pref = HighMemStart
	}
	if pref >= ramEnd {
		return 0, 0, errorf(ErrNoRoom, "memory too small: kernel wants to run at %#x but RAM below 4 GiB ends at %#x", pref, ramEnd)
	}
	var run uint64
	if s.relocatable {
		load = (pref + s.align - 1) &^ (s.align - 1)
		run = load
		end = run + s.initSize
	} else {
		load, run = HighMemStart, pref
		end = max(load+s.kernelLen, run+s.initSize)
	}
	if end > ramEnd {
		return 0, 0, errorf(ErrNoRoom, "memory too small: kernel needs RAM up to %#x (runs at %#x, init_size %d MiB) but RAM below 4 GiB ends at %#x",
			end, run, s.initSize>>20, ramEnd)
	}
	return load, end, nil
}

// planBzImage places the kernel, checks the command line against
// cmdline_size and sets the initrd's limit.
func planBzImage(pl *plan) error {
	s, name := pl.p.Kernel.bz, pl.p.Kernel.Name
	load, end, err := s.placement(pl.ramEnd)
	if err != nil {
		return fmt.Errorf("kernel %s: %w", name, err)
	}
	if uint64(len(pl.p.Cmdline)) > s.cmdlineSize {
		return errorf(ErrCmdline, "command line is %d bytes, %s accepts at most %d (cmdline_size)", len(pl.p.Cmdline), name, s.cmdlineSize)
	}
	pl.load, pl.end = load, end
	// initrd_addr_max is the highest byte the initrd may occupy.
	pl.initrdLimit, pl.initrdLimitName = pl.ramEnd, "end of RAM below 4 GiB"
	if s.initrdMax+1 < pl.initrdLimit {
		pl.initrdLimit, pl.initrdLimitName = s.initrdMax+1, "initrd_addr_max+1"
	}
	return nil
}

// writeBzImage copies the protected-mode part to its load address and
// writes the zero page, page tables and GDT (boot.rst, "64-bit Boot
// Protocol").
func writeBzImage(pl *plan) (*Entry, error) {
	p, s, m := pl.p, pl.p.Kernel.bz, pl.p.Mem
	if err := copyToGuest(m, pl.load, p.Kernel.r, s.kernelOff, s.kernelLen); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", p.Kernel.Name, err)
	}
	zp := make([]byte, zpSize)
	copy(zp[offSetupSects:len(s.hdr)], s.hdr[offSetupSects:])
	le := binary.LittleEndian
	le.PutUint16(zp[offVidMode:], vidModeNorm)
	zp[offTypeOfLoader] = loaderAnon
	le.PutUint32(zp[offCode32Start:], uint32(pl.load))
	le.PutUint32(zp[offCmdLinePtr:], AddrCmdline)
	le.PutUint32(zp[offRamdiskImage:], uint32(pl.initrd))
	le.PutUint32(zp[offRamdiskSize:], uint32(p.InitrdSize))
	le.PutUint32(zp[zpExtRamdisk:], uint32(pl.initrd>>32))
	le.PutUint32(zp[zpExtRamdiskSz:], uint32(uint64(p.InitrdSize)>>32))
	le.PutUint64(zp[offSetupData:], 0) // no setup_data list, whatever the file says
	le.PutUint64(zp[zpACPIRSDP:], pl.rsdp)
	es := e820Map(p.RAM)
	zp[zpE820Entries] = byte(len(es))
	for i, e := range es {
		o := zpE820Table + i*zpE820EntrySize
		le.PutUint64(zp[o:], e.Addr)
		le.PutUint64(zp[o+8:], e.Size)
		le.PutUint32(zp[o+16:], e.Type)
	}
	if _, err := m.WriteAt(zp, AddrZeroPage); err != nil {
		return nil, fmt.Errorf("zero page: %w", err)
	}
	if err := writePageTables(m); err != nil {
		return nil, fmt.Errorf("page tables: %w", err)
	}
	cs, ds, tr := flat(SelCode64, typeCodeRXA, 1, 0), flat(SelData, typeDataRWA, 0, 1), tssSegment(SelTSS)
	gdt, idt, err := writeGDT(m, []Segment{{}, flat(SelCode32, typeCodeRXA, 0, 1), cs, ds, tr}, true)
	if err != nil {
		return nil, fmt.Errorf("GDT: %w", err)
	}
	return &Entry{
		Protocol:  Linux64,
		KernelEnd: pl.end,
		Initrd:    [2]uint64{pl.initrd, uint64(p.InitrdSize)},
		BSP: CPUState{
			RIP: pl.load + entry64Delta, RSP: AddrStack, RSI: AddrZeroPage, RFLAGS: rflagsFixed,
			CR0:  cr0PE | cr0ET | cr0NE | cr0WP | cr0PG,
			CR3:  AddrPML4,
			CR4:  cr4PAE,
			EFER: eferLME | eferLMA,
			CS:   cs, DS: ds, TR: tr,
			GDT: gdt, IDT: idt,
		},
	}, nil
}

// Control register and flag bits (Intel SDM vol. 3 §2.5, §2.2.1; vol. 1
// §3.4.3: RFLAGS bit 1 is always set; IF clear keeps interrupts off).
const (
	rflagsFixed = 1 << 1
	cr0PE       = 1 << 0
	cr0ET       = 1 << 4
	cr0NE       = 1 << 5
	cr0WP       = 1 << 16
	cr0PG       = 1 << 31
	cr4PAE      = 1 << 5
	eferLME     = 1 << 8
	eferLMA     = 1 << 10
)

// Page-table entry bits (Intel SDM vol. 3 §4.5).
const (
	ptePresent = 1 << 0
	pteWrite   = 1 << 1
	ptePS      = 1 << 7 // 2 MiB page in a page directory
	numPD      = 4
)

// writePageTables identity-maps the first 4 GiB with 2 MiB pages, which
// covers the kernel's init_size footprint, zero page and command line as the
// 64-bit boot protocol requires.
func writePageTables(m io.WriterAt) error {
	b := make([]byte, 4096*(2+numPD))
	binary.LittleEndian.PutUint64(b[0:], AddrPDPT|ptePresent|pteWrite)
	for i := uint64(0); i < numPD; i++ {
		binary.LittleEndian.PutUint64(b[4096+i*8:], (AddrPD+i*4096)|ptePresent|pteWrite)
	}
	for i := uint64(0); i < numPD*512; i++ {
		binary.LittleEndian.PutUint64(b[8192+i*8:], i<<21|ptePresent|pteWrite|ptePS)
	}
	_, err := m.WriteAt(b, AddrPML4)
	return err
}
