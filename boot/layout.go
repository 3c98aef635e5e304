// Package boot loads a Linux kernel into guest RAM: a bzImage through the
// 64-bit Linux boot protocol (Documentation/arch/x86/boot.rst) or an ELF
// vmlinux through the PVH entry point (Xen's hvm_start_info), with the e820
// map, command line, initramfs, an MP table and optionally ACPI tables. It
// writes only through bounds-checked memory accessors and returns the boot
// CPU's initial state as plain data for the VMM to load into KVM.
package boot

import (
	"errors"
	"fmt"
)

// Fixed guest-physical layout of everything Load writes below 1 MiB. The
// structures must not overlap; TestLayoutDisjoint checks it.
//
//	0x00500  GDT (Linux64: 6 slots, PVH: 4)
//	0x00540  IDT (empty, limit 0)
//	0x00580  TSS (104 bytes, for TR)
//	0x06000  PVH hvm_start_info (56 bytes)
//	0x06040  PVH module list (1 hvm_modlist_entry, the initrd)
//	0x06080  PVH memory map (up to 128 hvm_memmap_table_entry)
//	0x07000  zero page (struct boot_params, 4 KiB)
//	0x08ff0  initial stack pointer (grows down)
//	0x09000  PML4
//	0x0a000  PDPT
//	0x0b000  4 page directories: the first 4 GiB identity-mapped, 2 MiB pages
//	0x20000  command line (up to MaxCmdline bytes)
//	0x9fc00  MP floating pointer (e820 reserved from here to 1 MiB)
//	0xe0000  ACPI tables: RSDP, DSDT, FADT, MADT, XSDT (16-byte aligned)
//	0xf0000  MP configuration table
//	1 MiB+   kernel (bzImage at pref_address, ELF at p_paddr), then the
//	         initrd as high as allowed below the 32-bit hole
//
// [0, 0x9fc00) is RAM in the e820 map; [0x9fc00, 1 MiB) is reserved, so the
// guest keeps the MP and ACPI tables.
const (
	AddrGDT       = 0x0500
	AddrIDT       = 0x0540
	AddrTSS       = 0x0580
	AddrStartInfo = 0x6000
	AddrZeroPage  = 0x7000
	AddrStack     = 0x8ff0
	AddrPML4      = 0x9000
	AddrPDPT      = 0xa000
	AddrPD        = 0xb000
	AddrCmdline   = 0x20000
	AddrMP        = 0x9fc00
	AddrACPI      = 0xe0000
	AddrMPConfig  = 0xf0000

	// EBDAStart..HighMemStart is reserved in e820 (tables, legacy BIOS area).
	EBDAStart    = 0x9fc00
	HighMemStart = 0x100000
	// MaxCmdline bounds the command line ember writes, NUL included (a
	// bzImage may accept less: setup_header.cmdline_size).
	MaxCmdline = 4096
	// MinLowMem is the least RAM below the 32-bit hole Load accepts.
	MinLowMem = 16 << 20
	// MaxCPUs is the most CPUs the MP/ACPI tables describe: APIC IDs are
	// 0..CPUs-1 and the I/O APIC takes ID CPUs, all below the broadcast 0xff.
	MaxCPUs = 254
)

// GDT selectors. Linux64 needs __BOOT_CS = 0x10 and __BOOT_DS = 0x18
// (boot.rst, "64-bit Boot Protocol"); 0x08 holds a 32-bit code segment there
// too. PVH leaves selectors unspecified; its GDT is code 0x08, data 0x10.
const (
	SelCode32  = 0x08
	SelCode64  = 0x10
	SelData    = 0x18
	SelTSS     = 0x20
	SelPVHData = 0x10
	SelPVHTSS  = 0x18
)

// Errors callers may test for with errors.Is.
var (
	ErrNotKernel   = errors.New("not a Linux kernel (no bzImage 'HdrS' magic and no ELF header)")
	ErrTruncated   = errors.New("truncated kernel file")
	ErrUnsupported = errors.New("unsupported kernel")
	ErrNoPVHEntry  = errors.New("ELF vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
	ErrNoRoom      = errors.New("does not fit in guest memory")
	ErrCmdline     = errors.New("bad command line")
	ErrParams      = errors.New("bad boot parameters")
)

// loadError is a one-line message that still matches its sentinel kind
// with errors.Is, without the sentinel's text being repeated.
type loadError struct {
	kind error
	msg  string
}

func (e *loadError) Error() string { return e.msg }
func (e *loadError) Unwrap() error { return e.kind }

func errorf(kind error, format string, a ...any) error {
	return &loadError{kind: kind, msg: fmt.Sprintf(format, a...)}
}

// Protocol is how the kernel is entered.
type Protocol int

// Boot protocols.
const (
	Linux64 Protocol = iota + 1 // bzImage, 64-bit boot protocol
	PVH                         // ELF vmlinux, XEN_ELFNOTE_PHYS32_ENTRY
)

// String names the protocol for logs.
func (p Protocol) String() string {
	switch p {
	case Linux64:
		return "linux64"
	case PVH:
		return "pvh"
	}
	return "unknown"
}

// Segment is a segment register with its hidden descriptor part, in the
// shape of KVM's kvm_segment. Limit is in bytes (already scaled by G).
type Segment struct {
	Base                                 uint64
	Limit                                uint32
	Selector                             uint16
	Type, Present, DPL, DB, S, L, G, AVL uint8
}

// Table is a descriptor-table register (GDTR, IDTR).
type Table struct {
	Base  uint64
	Limit uint16
}

// CPUState is the boot CPU's initial register state. DS is loaded into DS,
// ES, FS, GS and SS.
type CPUState struct {
	RIP, RSP, RSI, RBX, RFLAGS uint64
	CR0, CR3, CR4, EFER        uint64
	CS, DS                     Segment
	TR                         Segment // a busy TSS, as VMX/SVM require a usable TR
	GDT, IDT                   Table
}

// Entry is what Load produced.
type Entry struct {
	Protocol Protocol
	BSP      CPUState
	// KernelEnd is the end of the kernel's footprint in guest memory
	// (for a bzImage: runtime start + init_size).
	KernelEnd uint64
	// Initrd is the initramfs's guest address and size ({0, 0} if none).
	Initrd [2]uint64
	// RSDP is the ACPI RSDP's guest address, 0 without ACPI.
	RSDP uint64
}
