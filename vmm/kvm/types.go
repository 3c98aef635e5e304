package kvm

import "unsafe"

// The structures below are laid out exactly as their counterparts in
// include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h, so a pointer
// to one can be handed to an ioctl. TestUAPILayouts pins every size and
// offset against the kernel's headers.

// Regs is struct kvm_regs: the general-purpose registers.
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// Segment is struct kvm_segment: a segment register with its hidden part.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

// DTable is struct kvm_dtable: a descriptor-table register.
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs is struct kvm_sregs: segment, descriptor-table and control
// registers.
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8, EFER, APICBase    uint64
	InterruptBitmap        [4]uint64 // (KVM_NR_INTERRUPTS + 63) / 64
}

// CPUIDEntry is struct kvm_cpuid_entry2.
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	Flags    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// MSR is one model-specific register (struct kvm_msr_entry without its
// reserved word).
type MSR struct {
	Index uint32
	Value uint64
}

// msrEntry is struct kvm_msr_entry.
type msrEntry struct {
	Index uint32
	_     uint32
	Data  uint64
}

// userMemoryRegion is struct kvm_userspace_memory_region.
type userMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// irqLevel is struct kvm_irq_level.
type irqLevel struct {
	IRQ   uint32
	Level uint32
}

// irqfd is struct kvm_irqfd.
type irqfd struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	_          [16]uint8
}

// ioeventfd is struct kvm_ioeventfd.
type ioeventfd struct {
	DataMatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	_         [36]uint8
}

// fpu is struct kvm_fpu.
type fpu struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

// pitConfig is struct kvm_pit_config.
type pitConfig struct {
	Flags uint32
	_     [15]uint32
}

// lapicState is struct kvm_lapic_state.
type lapicState struct {
	Regs [sizeofLAPIC]byte
}

// UAPI sizes, checked against unsafe.Sizeof by TestUAPILayouts.
const (
	sizeofRegs             = 144
	sizeofSregs            = 312
	sizeofCPUIDEntry       = 40
	sizeofMSREntry         = 16
	sizeofUserMemoryRegion = 32
	sizeofIRQFD            = 32
	sizeofIOEventFD        = 64
	sizeofFPU              = 416
	sizeofPITConfig        = 64
	sizeofLAPIC            = 1024
)

// Compile-time checks that the Go layouts have the UAPI sizes.
var (
	_ [sizeofRegs - unsafe.Sizeof(Regs{})]byte
	_ [unsafe.Sizeof(Regs{}) - sizeofRegs]byte
	_ [sizeofSregs - unsafe.Sizeof(Sregs{})]byte
	_ [unsafe.Sizeof(Sregs{}) - sizeofSregs]byte
	_ [sizeofFPU - unsafe.Sizeof(fpu{})]byte
	_ [unsafe.Sizeof(fpu{}) - sizeofFPU]byte
	_ [sizeofIOEventFD - unsafe.Sizeof(ioeventfd{})]byte
	_ [unsafe.Sizeof(ioeventfd{}) - sizeofIOEventFD]byte
	_ [sizeofIRQFD - unsafe.Sizeof(irqfd{})]byte
	_ [unsafe.Sizeof(irqfd{}) - sizeofIRQFD]byte
)
