// Package kvm is the only package that issues KVM ioctls. Every ioctl that
// passes memory to the kernel is issued here through ioctlPtr, which keeps
// the argument a real pointer until the system call itself; from
// github.com/bobuhiro11/gokvm ember takes the ioctl-number helpers, the
// capability numbers and the fd-only calls (create VM, vCPU, irqchip), and
// none of its types appear in this package's API.
package kvm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"unsafe"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// APIVersion is the only KVM API version there has ever been.
const APIVersion = 12

// Sentinel errors.
var (
	// ErrUnavailable: /dev/kvm is missing or cannot be used.
	ErrUnavailable = errors.New("kvm unavailable")
	// ErrInterrupted: KVM_RUN returned because of a signal or immediate_exit.
	ErrInterrupted = errors.New("vcpu run interrupted")
)

// Capability is a KVM_CAP_* number.
type Capability = uintptr

// Capabilities ember requires.
const (
	CapIRQChip       Capability = uintptr(gokvm.CapIRQChip)
	CapUserMemory    Capability = uintptr(gokvm.CapUserMemory)
	CapSetTSSAddr    Capability = uintptr(gokvm.CapSetTSSAddr)
	CapPIT2          Capability = uintptr(gokvm.CapPIT2)
	CapIRQFD         Capability = uintptr(gokvm.CapIRQFD)
	CapIOEventFD     Capability = uintptr(gokvm.CapIOEventFD)
	CapImmediateExit Capability = uintptr(gokvm.CapImmediateExit)
	CapExtCPUID      Capability = uintptr(gokvm.CapEXTCPUID)
	CapMPState       Capability = uintptr(gokvm.CapMPState)
)

// System is an open /dev/kvm.
type System struct {
	f       *os.File
	runSize int
}

// Open opens the KVM device and checks the API version and the
// capabilities ember relies on.
func Open(path string) (*System, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	s := &System{f: f}
	v, err := ioctl(s.fd(), ioctlGetVersion, 0)
	if err != nil || v != APIVersion {
		f.Close()
		return nil, fmt.Errorf("%w: %s: API version %d, want %d (%v)", ErrUnavailable, path, v, APIVersion, err)
	}
	for _, c := range []struct {
		cap  Capability
		name string
	}{
		{CapIRQChip, "KVM_CAP_IRQCHIP"},
		{CapUserMemory, "KVM_CAP_USER_MEMORY"},
		{CapSetTSSAddr, "KVM_CAP_SET_TSS_ADDR"},
		{CapPIT2, "KVM_CAP_PIT2"},
		{CapIRQFD, "KVM_CAP_IRQFD"},
		{CapIOEventFD, "KVM_CAP_IOEVENTFD"},
		{CapImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"},
		{CapExtCPUID, "KVM_CAP_EXT_CPUID"},
		{CapMPState, "KVM_CAP_MP_STATE"},
	} {
		if n, err := s.Check(c.cap); err != nil || n == 0 {
			f.Close()
			return nil, fmt.Errorf("%w: %s lacks %s", ErrUnavailable, path, c.name)
		}
	}
	n, err := gokvm.GetVCPUMMmapSize(s.fd())
	if err != nil || n < runMinSize {
		f.Close()
		return nil, fmt.Errorf("%w: KVM_GET_VCPU_MMAP_SIZE: %d, %v", ErrUnavailable, n, err)
	}
	s.runSize = int(n)
	return s, nil
}

func (s *System) fd() uintptr { return s.f.Fd() }

// Check returns KVM_CHECK_EXTENSION for c.
func (s *System) Check(c Capability) (int, error) {
	r, err := ioctl(s.fd(), ioctlCheckExtension, c)
	return int(r), err
}

// Close closes /dev/kvm.
func (s *System) Close() error { return s.f.Close() }

// maxCPUIDEntries bounds KVM_GET_SUPPORTED_CPUID's answer; KVM reports
// E2BIG if it has more (it has about 60 today).
const maxCPUIDEntries = 256

// SupportedCPUID returns the CPUID entries KVM can expose to a guest.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	buf := make([]byte, 8+maxCPUIDEntries*sizeofCPUIDEntry)
	putU32(buf, 0, maxCPUIDEntries) // nent
	if _, err := ioctlPtr(s.fd(), ioctlGetSupportedCID, unsafe.Pointer(&buf[0])); err != nil {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	n := getU32(buf, 0)
	if n > maxCPUIDEntries {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %d entries, at most %d expected", n, maxCPUIDEntries)
	}
	out := make([]CPUIDEntry, n)
	for i := range out {
		o := 8 + i*sizeofCPUIDEntry
		out[i] = CPUIDEntry{
			Function: getU32(buf, o), Index: getU32(buf, o+4), Flags: getU32(buf, o+8),
			EAX: getU32(buf, o+12), EBX: getU32(buf, o+16), ECX: getU32(buf, o+20), EDX: getU32(buf, o+24),
		}
	}
	return out, nil
}

// VM is one KVM virtual machine.
type VM struct {
	sys *System
	f   *os.File
}

// CreateVM creates a VM.
func (s *System) CreateVM() (*VM, error) {
	fd, err := gokvm.CreateVM(s.fd())
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	unix.CloseOnExec(int(fd))
	return &VM{sys: s, f: os.NewFile(fd, "kvm-vm")}, nil
}

// Close releases the VM.
func (v *VM) Close() error { return v.f.Close() }

func (v *VM) fd() uintptr { return v.f.Fd() }

// SetMemory maps size bytes at host address hva into the guest at gpa. The
// caller guarantees that [hva, hva+size) is a mapping that outlives the VM.
func (v *VM) SetMemory(slot uint32, gpa, size uint64, hva uintptr) error {
	r := userMemoryRegion{Slot: slot, GuestPhysAddr: gpa, MemorySize: size, UserspaceAddr: uint64(hva)}
	if _, err := ioctlPtr(v.fd(), ioctlSetUserMemory, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d at %#x: %w", slot, gpa, err)
	}
	return nil
}

// SetupX86 sets the TSS and identity-map addresses (needed on Intel hosts,
// harmless on AMD) and creates the in-kernel PIC/IOAPIC/LAPIC and PIT.
func (v *VM) SetupX86(tssAddr uint32) error {
	if err := gokvm.SetTSSAddr(v.fd(), tssAddr); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR: %w", err)
	}
	if err := gokvm.SetIdentityMapAddr(v.fd(), tssAddr+3*4096); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR: %w", err)
	}
	if err := gokvm.CreateIRQChip(v.fd()); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	pit := pitConfig{}
	if _, err := ioctlPtr(v.fd(), ioctlCreatePIT2, unsafe.Pointer(&pit)); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// IRQLine sets the level of an interrupt line (GSI).
func (v *VM) IRQLine(gsi uint32, level bool) error {
	l := irqLevel{IRQ: gsi}
	if level {
		l.Level = 1
	}
	if _, err := ioctlPtr(v.fd(), ioctlIRQLine, unsafe.Pointer(&l)); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE gsi %d: %w", gsi, err)
	}
	return nil
}

// Flags of struct kvm_irqfd and struct kvm_ioeventfd.
const (
	irqfdDeassign      = 1 << 0
	irqfdResample      = 1 << 1
	ioeventfdDataMatch = 1 << 0
	ioeventfdPIO       = 1 << 1
	ioeventfdDeassign  = 1 << 2
)

// IRQFD makes a write to eventfd efd raise gsi without an exit to userspace
// (KVM_IRQFD). With resample >= 0 the line is level-triggered: KVM holds it
// asserted until the guest acknowledges it (EOI), then lowers it and signals
// resample, so the device can raise it again if it still needs service.
func (v *VM) IRQFD(efd int, gsi uint32, resample int) error {
	a := irqfd{FD: uint32(efd), GSI: gsi}
	if resample >= 0 {
		a.Flags, a.ResampleFD = irqfdResample, uint32(resample)
	}
	if _, err := ioctlPtr(v.fd(), ioctlIRQFD, unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("KVM_IRQFD gsi %d: %w", gsi, err)
	}
	return nil
}

// RemoveIRQFD detaches efd from gsi.
func (v *VM) RemoveIRQFD(efd int, gsi uint32) error {
	a := irqfd{FD: uint32(efd), GSI: gsi, Flags: irqfdDeassign}
	if _, err := ioctlPtr(v.fd(), ioctlIRQFD, unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("KVM_IRQFD deassign gsi %d: %w", gsi, err)
	}
	return nil
}

// IOEvent describes guest writes that signal an eventfd instead of exiting
// to userspace (KVM_IOEVENTFD).
type IOEvent struct {
	Addr uint64
	// Len is the access width (1, 2, 4 or 8); 0 matches writes of any width
	// (MMIO only, and never with Match).
	Len uint32
	// PIO selects the port-I/O space instead of MMIO.
	PIO bool
	// Match makes only writes of Data signal (a virtio queue index, say).
	Match bool
	Data  uint64
}

func (e IOEvent) encode(efd int, deassign bool) (ioeventfd, error) {
	a := ioeventfd{Addr: e.Addr, Len: e.Len, FD: int32(efd), DataMatch: e.Data}
	switch e.Len {
	case 1, 2, 4, 8:
	case 0:
		if e.PIO || e.Match {
			return a, fmt.Errorf("KVM_IOEVENTFD %#x: a zero length needs MMIO without datamatch", e.Addr)
		}
	default:
		return a, fmt.Errorf("KVM_IOEVENTFD %#x: length %d (want 0, 1, 2, 4 or 8)", e.Addr, e.Len)
	}
	if e.Addr+uint64(e.Len) < e.Addr {
		return a, fmt.Errorf("KVM_IOEVENTFD %#x+%d wraps around", e.Addr, e.Len)
	}
	if e.PIO {
		a.Flags |= ioeventfdPIO
	}
	if e.Match {
		a.Flags |= ioeventfdDataMatch
	}
	if deassign {
		a.Flags |= ioeventfdDeassign
	}
	return a, nil
}

// AddIOEvent makes guest writes described by e signal efd.
func (v *VM) AddIOEvent(efd int, e IOEvent) error {
	a, err := e.encode(efd, false)
	if err != nil {
		return err
	}
	if _, err := ioctlPtr(v.fd(), ioctlIOEventFD, unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD %#x: %w", e.Addr, err)
	}
	return nil
}

// RemoveIOEvent undoes AddIOEvent with the same arguments.
func (v *VM) RemoveIOEvent(efd int, e IOEvent) error {
	a, err := e.encode(efd, true)
	if err != nil {
		return err
	}
	if _, err := ioctlPtr(v.fd(), ioctlIOEventFD, unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD deassign %#x: %w", e.Addr, err)
	}
	return nil
}

// HostAddr is the address of b's first byte, for SetMemory. b must be
// backed by an mmap, never by the Go heap (whose objects the collector
// may free once only a uintptr refers to them).
func HostAddr(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// HardwareBacked reports whether the CPU offers hardware virtualization
// (VMX or SVM). A /dev/kvm without it, such as a paravirtual KVM (PVM),
// opens and even creates VMs but cannot run a stock kernel. When
// /proc/cpuinfo cannot be read, KVM gets the benefit of the doubt.
func HardwareBacked() bool {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return true
	}
	return hasVirtFlag(b)
}

func hasVirtFlag(cpuinfo []byte) bool {
	for _, line := range bytes.Split(cpuinfo, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("flags")) {
			continue
		}
		for _, f := range bytes.Fields(line) {
			if bytes.Equal(f, []byte("vmx")) || bytes.Equal(f, []byte("svm")) {
				return true
			}
		}
		return false
	}
	return false
}
