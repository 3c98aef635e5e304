// Package boot loads a Linux kernel into guest RAM: a bzImage through the
// 64-bit Linux boot protocol (Documentation/arch/x86/boot.rst) or an ELF
// vmlinux through the PVH entry point (Xen's hvm_start_info), with the e820
// map, command line, initramfs and an MP table. It writes only through
// bounds-checked memory accessors and returns the boot CPU's initial state
// as plain data for the VMM to load into KVM.
package boot

import "errors"

// Fixed guest-physical layout of the boot structures, all below the EBDA:
//
//	0x0500  GDT (5 entries)            0x9000  PML4
//	0x0520  IDT (empty)                0xa000  PDPT
//	0x6000  PVH hvm_start_info,        0xb000  4 page directories: the first
//	        module list, memory map            4 GiB identity-mapped, 2 MiB pages
//	0x7000  zero page (boot_params)    0x20000 command line
//	0x8ff0  initial stack pointer      0x9fc00 MP floating pointer + table
const (
	AddrGDT       = 0x0500
	AddrIDT       = 0x0520
	AddrStartInfo = 0x6000
	AddrZeroPage  = 0x7000
	AddrStack     = 0x8ff0
	AddrPML4      = 0x9000
	AddrPDPT      = 0xa000
	AddrPD        = 0xb000
	AddrCmdline   = 0x20000
	AddrMP        = 0x9fc00
	// EBDAStart..HighMemStart is reserved in e820 (tables, legacy BIOS area).
	EBDAStart    = 0x9fc00
	HighMemStart = 0x100000
	// MaxCmdline bounds the command line ember writes (the kernel may
	// accept less: setup_header.cmdline_size).
	MaxCmdline = 4096
	// IOAPICAddr and LAPICAddr are where KVM's in-kernel chips live.
	IOAPICAddr = 0xfec00000
	LAPICAddr  = 0xfee00000
)

// GDT selectors: 0x08 flat 32-bit code (PVH), 0x10 64-bit code (__BOOT_CS),
// 0x18 flat data (__BOOT_DS), 0x20 TSS.
const (
	SelCode32 = 0x08
	SelCode64 = 0x10
	SelData   = 0x18
	SelTSS    = 0x20
)

// Errors callers may test for.
var (
	ErrNotKernel   = errors.New("not a Linux kernel (no bzImage 'HdrS' header and no ELF header)")
	ErrTruncated   = errors.New("truncated")
	ErrUnsupported = errors.New("unsupported kernel")
	ErrNoRoom      = errors.New("does not fit in guest memory")
)

// Protocol is how the kernel is entered.
type Protocol int

// Boot protocols.
const (
	Linux64 Protocol = iota + 1 // bzImage, 64-bit boot protocol
	PVH                         // ELF vmlinux, XEN_ELFNOTE_PHYS32_ENTRY
)

func (p Protocol) String() string {
	switch p {
	case Linux64:
		return "linux64"
	case PVH:
		return "pvh"
	}
	return "unknown"
}

// Segment is a segment register with its hidden descriptor part.
type Segment struct {
	Base                                 uint64
	Limit                                uint32
	Selector                             uint16
	Type, Present, DPL, DB, S, L, G, AVL uint8
}

// Table is a descriptor-table register.
type Table struct {
	Base  uint64
	Limit uint16
}

// CPUState is the boot CPU's initial register state.
type CPUState struct {
	RIP, RSP, RSI, RBX, RFLAGS uint64
	CR0, CR3, CR4, EFER        uint64
	CS, DS, TR                 Segment
	GDT, IDT                   Table
}

// Entry is what Load produced.
type Entry struct {
	Protocol  Protocol
	BSP       CPUState
	KernelEnd uint64 // end of the kernel's footprint in guest memory
	Initrd    [2]uint64
}
