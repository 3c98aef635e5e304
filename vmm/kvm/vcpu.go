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
	ExitInternalError = 17
	ExitSystemEvent   = 24
)

// ExitName returns a readable name for an exit reason.
func ExitName(r uint32) string {
	switch r {
	case ExitUnknown:
		return "unknown"
	case ExitException:
		return "exception"
	case ExitIO:
		return "io"
	case ExitHypercall:
		return "hypercall"
	case ExitDebug:
		return "debug"
	case ExitHLT:
		return "hlt"
	case ExitMMIO:
		return "mmio"
	case ExitIRQWindowOpen:
		return "irq-window"
	case ExitShutdown:
		return "shutdown"
	case ExitFailEntry:
		return "fail-entry"
	case ExitIntr:
		return "intr"
	case ExitInternalError:
		return "internal-error"
	case ExitSystemEvent:
		return "system-event"
	}
	return fmt.Sprintf("exit-%d", r)
}

// Offsets into struct kvm_run (include/uapi/linux/kvm.h). The run area is
// read with encoding/binary through a byte slice, never through a Go struct
// laid over the mapping.
const (
	runImmediateExit = 1
	runExitReason    = 8
	runExitData      = 32 // start of the exit union
)

// VCPU is one virtual CPU and its shared run area.
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

// Close unmaps the run area and closes the vCPU. Safe to call twice.
func (c *VCPU) Close() error {
	if c.run != nil {
		_ = unix.Munmap(c.run)
		c.run = nil
	}
	return c.f.Close()
}

func (c *VCPU) fd() uintptr { return c.f.Fd() }

// Run enters the guest until the next exit. It returns ErrInterrupted when
// a signal or immediate_exit stopped it; every other error is returned as is.
func (c *VCPU) Run() error {
	_, err := ioctl(int(c.fd()), ioctlRun, 0)
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

// IO decodes the current port I/O exit. A data offset or length outside the
// run area (which only a broken kernel could produce) is an error.
func (c *VCPU) IO() (IO, error) {
	d := c.run[runExitData:]
	io := IO{
		Out:   d[0] == 1,
		Size:  int(d[1]),
		Port:  binary.LittleEndian.Uint16(d[2:]),
		Count: int(binary.LittleEndian.Uint32(d[4:])),
	}
	off := binary.LittleEndian.Uint64(d[8:])
	n := uint64(io.Size) * uint64(io.Count)
	if io.Size == 0 || off > uint64(len(c.run)) || n > uint64(len(c.run))-off {
		return io, fmt.Errorf("vcpu %d: io exit data out of run area (offset %d, %d bytes)", c.ID, off, n)
	}
	io.Data = c.run[off : off+n]
	return io, nil
}

// MMIO describes an MMIO exit; Data (len 1..8) is inside the run area.
type MMIO struct {
	Addr  uint64
	Write bool
	Data  []byte
}

// MMIO decodes the current MMIO exit.
func (c *VCPU) MMIO() MMIO {
	d := c.run[runExitData:]
	n := binary.LittleEndian.Uint32(d[16:])
	if n > 8 {
		n = 8
	}
	return MMIO{Addr: binary.LittleEndian.Uint64(d[0:]), Data: d[8 : 8+n], Write: d[20] != 0}
}

// ExitDetail returns the raw words of the exit union, for error messages
// (fail_entry reason, internal error suberror, system event type).
func (c *VCPU) ExitDetail() [4]uint64 {
	d := c.run[runExitData:]
	var w [4]uint64
	for i := range w {
		w[i] = binary.LittleEndian.Uint64(d[i*8:])
	}
	return w
}

// Regs and Sregs are KVM's register sets.
type (
	Regs    = gokvm.Regs
	Sregs   = gokvm.Sregs
	Segment = gokvm.Segment
)

// GetRegs reads the general-purpose registers.
func (c *VCPU) GetRegs() (*Regs, error) { return gokvm.GetRegs(c.fd()) }

// SetRegs writes the general-purpose registers.
func (c *VCPU) SetRegs(r *Regs) error { return gokvm.SetRegs(c.fd(), r) }

// GetSregs reads the special registers.
func (c *VCPU) GetSregs() (*Sregs, error) { return gokvm.GetSregs(c.fd()) }

// SetSregs writes the special registers.
func (c *VCPU) SetSregs(s *Sregs) error { return gokvm.SetSregs(c.fd(), s) }

// CPUIDEntry is one KVM CPUID entry.
type CPUIDEntry = gokvm.CPUIDEntry2

// SetCPUID sets the vCPU's CPUID table.
func (c *VCPU) SetCPUID(entries []CPUIDEntry) error {
	t := &gokvm.CPUID{Nent: uint32(len(entries)), Entries: entries}
	if err := gokvm.SetCPUID2(c.fd(), t); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2: %w", err)
	}
	return nil
}

// MSR is an index/value pair.
type MSR struct {
	Index uint32
	Value uint64
}

// SetMSRs writes model-specific registers; all must be accepted.
func (c *VCPU) SetMSRs(msrs []MSR) error {
	m := &gokvm.MSRS{NMSRs: uint32(len(msrs))}
	for _, e := range msrs {
		m.Entries = append(m.Entries, gokvm.MSREntry{Index: e.Index, Data: e.Value})
	}
	if err := gokvm.SetMSRs(c.fd(), m); err != nil {
		return fmt.Errorf("KVM_SET_MSRS: %w", err)
	}
	return nil
}

// SetFPU initialises the x87/SSE state (FCW 0x37f, MXCSR 0x1f80, the
// power-on values the kernel expects).
func (c *VCPU) SetFPU() error {
	var b [416]byte
	binary.LittleEndian.PutUint16(b[128:], 0x37f)  // fcw
	binary.LittleEndian.PutUint32(b[408:], 0x1f80) // mxcsr
	if _, err := ioctl(int(c.fd()), ioctlSetFPU, uintptr(unsafe.Pointer(&b[0]))); err != nil {
		return fmt.Errorf("KVM_SET_FPU: %w", err)
	}
	return nil
}

// SetupLINT programs the local APIC's LINT0 as ExtINT and LINT1 as NMI, the
// virtual-wire state firmware leaves behind (MP spec 1.4 §3.6.2.2).
func (c *VCPU) SetupLINT() error {
	var l gokvm.LAPICState
	if err := gokvm.GetLocalAPIC(c.fd(), &l); err != nil {
		return fmt.Errorf("KVM_GET_LAPIC: %w", err)
	}
	set := func(off int, mode uint32) {
		v := binary.LittleEndian.Uint32(l.Regs[off:])
		v = v&^(0x700|1<<16) | mode<<8
		binary.LittleEndian.PutUint32(l.Regs[off:], v)
	}
	set(0x350, 7) // LVT LINT0: ExtINT
	set(0x360, 4) // LVT LINT1: NMI
	if err := gokvm.SetLocalAPIC(c.fd(), &l); err != nil {
		return fmt.Errorf("KVM_SET_LAPIC: %w", err)
	}
	return nil
}
