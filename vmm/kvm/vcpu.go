package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// Exit reasons (KVM_EXIT_*), include/uapi/linux/kvm.h.
const (
	ExitUnknown       = 0
	ExitException     = 1
	ExitIO            = 2
	ExitHypercall     = 3
	ExitDebug         = 4
	ExitHLT           = 5
	ExitMMIO          = 6
	ExitIRQWindowOpen = 7
	ExitShutdown      = 8
	ExitFailEntry     = 9
	ExitIntr          = 10
	ExitNMI           = 16
	ExitInternalError = 17
	ExitSystemEvent   = 24
	ExitIOAPICEOI     = 26
	ExitX86RDMSR      = 29
	ExitX86WRMSR      = 30
	ExitX86BusLock    = 33
	ExitNotify        = 37
	ExitMemoryFault   = 39
)

var exitNames = map[uint32]string{
	ExitUnknown: "unknown", ExitException: "exception", ExitIO: "io", ExitHypercall: "hypercall",
	ExitDebug: "debug", ExitHLT: "hlt", ExitMMIO: "mmio", ExitIRQWindowOpen: "irq-window",
	ExitShutdown: "shutdown", ExitFailEntry: "fail-entry", ExitIntr: "intr", ExitNMI: "nmi",
	ExitInternalError: "internal-error", ExitSystemEvent: "system-event", ExitIOAPICEOI: "ioapic-eoi",
	ExitX86RDMSR: "rdmsr", ExitX86WRMSR: "wrmsr", ExitX86BusLock: "bus-lock", ExitNotify: "notify",
	ExitMemoryFault: "memory-fault",
}

// ExitName returns a readable name for an exit reason.
func ExitName(r uint32) string {
	if n, ok := exitNames[r]; ok {
		return n
	}
	return fmt.Sprintf("exit-%d", r)
}

// Offsets into struct kvm_run (include/uapi/linux/kvm.h). The run area is
// read with encoding/binary through a byte slice, never through a Go struct
// laid over the mapping; TestUAPILayouts pins every offset.
const (
	runImmediateExit = 1
	runExitReason    = 8
	runExitData      = 32 // start of the exit union

	// union member io
	runIODirection  = 32
	runIOSize       = 33
	runIOPort       = 34
	runIOCount      = 36
	runIODataOffset = 40
	// union member mmio
	runMMIOPhysAddr = 32
	runMMIOData     = 40
	runMMIOLen      = 48
	runMMIOIsWrite  = 52
	// union member system_event
	runSystemEventType  = 32
	runSystemEventNData = 36
	runSystemEventData  = 40
	// union members fail_entry and internal
	runFailEntryReason  = 32
	runInternalSuberror = 32

	runMinSize = 4096

	ioDirectionOut = 1
)

// System event types (KVM_SYSTEM_EVENT_*).
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
	SystemEventWakeup   = 4
	SystemEventSuspend  = 5
	SystemEventSEVTerm  = 6
)

// MP states (KVM_MP_STATE_*, x86 subset).
const (
	MPStateRunnable      = uint32(gokvm.MPStateRunnable)
	MPStateUninitialized = uint32(gokvm.MPStateUninitialized)
	MPStateInitReceived  = uint32(gokvm.MPStateInitReceived)
	MPStateHalted        = uint32(gokvm.MPStateHalted)
	MPStateSIPIReceived  = uint32(gokvm.MPStateSipiReceived)
)

// VCPU is one virtual CPU and its shared run area. Run, the exit decoders
// and the register calls belong to the vCPU's own thread; SetImmediateExit
// may be called from anywhere until Close.
type VCPU struct {
	ID  int
	f   *os.File
	run []byte
}

// CreateVCPU creates vCPU id and maps its run area.
func (v *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := gokvm.CreateVCPU(v.fd(), id)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	unix.CloseOnExec(int(fd))
	f := os.NewFile(fd, fmt.Sprintf("kvm-vcpu-%d", id))
	run, err := unix.Mmap(int(fd), 0, v.sys.runSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("mmap vcpu %d run area: %w", id, err)
	}
	return &VCPU{ID: id, f: f, run: run}, nil
}

// Close unmaps the run area and closes the vCPU. Safe to call twice; the
// caller makes sure no thread uses the vCPU any more.
func (c *VCPU) Close() error {
	var err error
	if c.run != nil {
		err = unix.Munmap(c.run)
		c.run = nil
	}
	if c.f != nil {
		err = errors.Join(err, c.f.Close())
		c.f = nil
	}
	return err
}

func (c *VCPU) fd() uintptr { return c.f.Fd() }

// Run enters the guest until the next exit. It returns ErrInterrupted when
// a signal or immediate_exit stopped it; every other error is returned as is.
func (c *VCPU) Run() error {
	_, err := ioctl(c.fd(), ioctlRun, 0)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
		return ErrInterrupted
	}
	return fmt.Errorf("KVM_RUN vcpu %d: %w", c.ID, err)
}

// SetImmediateExit makes the next (or current, once signalled) KVM_RUN return
// at once with EINTR.
func (c *VCPU) SetImmediateExit(on bool) {
	var b byte
	if on {
		b = 1
	}
	c.run[runImmediateExit] = b
}

// ExitReason returns the reason of the last exit.
func (c *VCPU) ExitReason() uint32 { return binary.LittleEndian.Uint32(c.run[runExitReason:]) }

// IO describes a port I/O exit. Data holds Size*Count bytes inside the run
// area; for an "in" the VMM fills it.
type IO struct {
	Out   bool
	Size  int
	Port  uint16
	Count int
	Data  []byte
}

// IO decodes the current port I/O exit. A size other than 1, 2 or 4, or
// data outside the run area (which only a broken kernel could produce), is
// an error.
func (c *VCPU) IO() (IO, error) {
	return decodeIO(c.run, c.ID)
}

func decodeIO(run []byte, id int) (IO, error) {
	le := binary.LittleEndian
	io := IO{
		Out:   run[runIODirection] == ioDirectionOut,
		Size:  int(run[runIOSize]),
		Port:  le.Uint16(run[runIOPort:]),
		Count: int(le.Uint32(run[runIOCount:])),
	}
	off := le.Uint64(run[runIODataOffset:])
	n := uint64(io.Size) * uint64(io.Count)
	if (io.Size != 1 && io.Size != 2 && io.Size != 4) || off > uint64(len(run)) || n > uint64(len(run))-off {
		return io, fmt.Errorf("vcpu %d: bad io exit (size %d, count %d, data at %d of %d)", id, io.Size, io.Count, off, len(run))
	}
	io.Data = run[off : off+n]
	return io, nil
}

// MMIO describes an MMIO exit; Data (len 1..8) is inside the run area.
type MMIO struct {
	Addr  uint64
	Write bool
	Data  []byte
}

// MMIO decodes the current MMIO exit.
func (c *VCPU) MMIO() (MMIO, error) {
	return decodeMMIO(c.run, c.ID)
}

func decodeMMIO(run []byte, id int) (MMIO, error) {
	n := binary.LittleEndian.Uint32(run[runMMIOLen:])
	if n == 0 || n > 8 {
		return MMIO{}, fmt.Errorf("vcpu %d: bad mmio exit length %d", id, n)
	}
	return MMIO{
		Addr:  binary.LittleEndian.Uint64(run[runMMIOPhysAddr:]),
		Data:  run[runMMIOData : runMMIOData+n],
		Write: run[runMMIOIsWrite] != 0,
	}, nil
}

// SystemEvent is a KVM_EXIT_SYSTEM_EVENT: the guest asked for a shutdown,
// reset or reported a crash (through PSCI, Hyper-V or SEV).
type SystemEvent struct {
	Type uint32
	Data []uint64
}

// SystemEvent decodes the current system-event exit.
func (c *VCPU) SystemEvent() SystemEvent { return decodeSystemEvent(c.run) }

func decodeSystemEvent(run []byte) SystemEvent {
	le := binary.LittleEndian
	e := SystemEvent{Type: le.Uint32(run[runSystemEventType:])}
	n := min(le.Uint32(run[runSystemEventNData:]), 16)
	for i := uint32(0); i < n; i++ {
		e.Data = append(e.Data, le.Uint64(run[runSystemEventData+8*int(i):]))
	}
	return e
}

// FailEntryReason is the hardware reason of a KVM_EXIT_FAIL_ENTRY.
func (c *VCPU) FailEntryReason() uint64 {
	return binary.LittleEndian.Uint64(c.run[runFailEntryReason:])
}

// InternalSuberror is the suberror of a KVM_EXIT_INTERNAL_ERROR.
func (c *VCPU) InternalSuberror() uint32 {
	return binary.LittleEndian.Uint32(c.run[runInternalSuberror:])
}

// GetRegs reads the general-purpose registers.
func (c *VCPU) GetRegs() (*Regs, error) {
	r := new(Regs)
	if _, err := ioctlPtr(c.fd(), ioctlGetRegs, unsafe.Pointer(r)); err != nil {
		return nil, fmt.Errorf("KVM_GET_REGS: %w", err)
	}
	return r, nil
}

// SetRegs writes the general-purpose registers.
func (c *VCPU) SetRegs(r *Regs) error {
	if _, err := ioctlPtr(c.fd(), ioctlSetRegs, unsafe.Pointer(r)); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	return nil
}

// GetSregs reads the special registers.
func (c *VCPU) GetSregs() (*Sregs, error) {
	s := new(Sregs)
	if _, err := ioctlPtr(c.fd(), ioctlGetSregs, unsafe.Pointer(s)); err != nil {
		return nil, fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	return s, nil
}

// SetSregs writes the special registers.
func (c *VCPU) SetSregs(s *Sregs) error {
	if _, err := ioctlPtr(c.fd(), ioctlSetSregs, unsafe.Pointer(s)); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	return nil
}

// SetCPUID sets the vCPU's CPUID table.
func (c *VCPU) SetCPUID(entries []CPUIDEntry) error {
	buf := make([]byte, 8+len(entries)*sizeofCPUIDEntry)
	putU32(buf, 0, uint32(len(entries)))
	for i, e := range entries {
		o := 8 + i*sizeofCPUIDEntry
		for j, v := range []uint32{e.Function, e.Index, e.Flags, e.EAX, e.EBX, e.ECX, e.EDX} {
			putU32(buf, o+4*j, v)
		}
	}
	if _, err := ioctlPtr(c.fd(), ioctlSetCPUID2, unsafe.Pointer(&buf[0])); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2: %w", err)
	}
	return nil
}

// SetMSRs writes model-specific registers. KVM_SET_MSRS stops at the first
// MSR it refuses and returns how many it set: anything short of all is an
// error naming the refused one.
func (c *VCPU) SetMSRs(msrs []MSR) error {
	if len(msrs) == 0 {
		return nil
	}
	buf := make([]byte, 8+len(msrs)*sizeofMSREntry)
	putU32(buf, 0, uint32(len(msrs)))
	for i, m := range msrs {
		o := 8 + i*sizeofMSREntry
		putU32(buf, o, m.Index)
		binary.LittleEndian.PutUint64(buf[o+8:], m.Value)
	}
	n, err := ioctlPtr(c.fd(), ioctlSetMSRs, unsafe.Pointer(&buf[0]))
	if err != nil {
		return fmt.Errorf("KVM_SET_MSRS: %w", err)
	}
	if int(n) != len(msrs) {
		return fmt.Errorf("KVM_SET_MSRS: only %d of %d set; MSR %#x refused", n, len(msrs), msrs[min(int(n), len(msrs)-1)].Index)
	}
	return nil
}

// SetFPU initialises the x87/SSE state (FCW 0x37f, MXCSR 0x1f80, the
// power-on values the kernel expects).
func (c *VCPU) SetFPU() error {
	f := fpu{FCW: 0x37f, MXCSR: 0x1f80}
	if _, err := ioctlPtr(c.fd(), ioctlSetFPU, unsafe.Pointer(&f)); err != nil {
		return fmt.Errorf("KVM_SET_FPU: %w", err)
	}
	return nil
}

// Local APIC register offsets (Intel SDM vol. 3 §11.4.1, Table 11-1).
const (
	lapicLVTLINT0 = 0x350
	lapicLVTLINT1 = 0x360
	lvtModeExtINT = 7
	lvtModeNMI    = 4
)

// SetupLINT programs the local APIC's LINT0 as ExtINT and LINT1 as NMI, the
// virtual-wire state firmware leaves behind (MP spec 1.4 §3.6.2.2).
func (c *VCPU) SetupLINT() error {
	l := new(lapicState)
	if _, err := ioctlPtr(c.fd(), ioctlGetLAPIC, unsafe.Pointer(l)); err != nil {
		return fmt.Errorf("KVM_GET_LAPIC: %w", err)
	}
	set := func(off int, mode uint32) {
		v := binary.LittleEndian.Uint32(l.Regs[off:])
		v = v&^(0x700|1<<16) | mode<<8
		binary.LittleEndian.PutUint32(l.Regs[off:], v)
	}
	set(lapicLVTLINT0, lvtModeExtINT)
	set(lapicLVTLINT1, lvtModeNMI)
	if _, err := ioctlPtr(c.fd(), ioctlSetLAPIC, unsafe.Pointer(l)); err != nil {
		return fmt.Errorf("KVM_SET_LAPIC: %w", err)
	}
	return nil
}

// MPState returns the vCPU's multiprocessing state (MPState*). Called while
// the vCPU is outside KVM_RUN, from its own thread.
func (c *VCPU) MPState() (uint32, error) {
	var s uint32
	if _, err := ioctlPtr(c.fd(), ioctlGetMPState, unsafe.Pointer(&s)); err != nil {
		return 0, fmt.Errorf("KVM_GET_MP_STATE: %w", err)
	}
	return s, nil
}

func putU32(b []byte, off int, v uint32) { binary.LittleEndian.PutUint32(b[off:], v) }
func getU32(b []byte, off int) uint32    { return binary.LittleEndian.Uint32(b[off:]) }
