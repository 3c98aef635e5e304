// Package kvm is the only package that issues KVM ioctls. It wraps
// github.com/bobuhiro11/gokvm's kvm package where that is complete and
// correct, and adds what it lacks (irqfd, ioeventfd, FPU, a KVM_RUN that
// reports every error, bounds-checked access to the shared run structure).
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

// APIVersion is the only KVM API version there has ever been.
const APIVersion = 12

// Sentinel errors.
var (
	// ErrUnavailable: /dev/kvm is missing or cannot be used.
	ErrUnavailable = errors.New("kvm unavailable")
	// ErrInterrupted: KVM_RUN returned because of a signal or immediate_exit.
	ErrInterrupted = errors.New("vcpu run interrupted")
)

// ioctl numbers gokvm does not provide; from include/uapi/linux/kvm.h.
var (
	ioctlIRQFD      = iow(0x76, 32)  // struct kvm_irqfd
	ioctlIOEventFD  = iow(0x79, 64)  // struct kvm_ioeventfd
	ioctlSetFPU     = iow(0x8d, 416) // struct kvm_fpu
	ioctlRun        = uintptr(0xAE80)
	ioctlCheckExt   = uintptr(0xAE03)
	ioctlGetVersion = uintptr(0xAE00)
)

func iow(nr, size uintptr) uintptr { return 1<<30 | size<<16 | 0xAE<<8 | nr }

func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

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
		cap  gokvm.Capability
		name string
	}{
		{gokvm.CapIRQChip, "KVM_CAP_IRQCHIP"},
		{gokvm.CapUserMemory, "KVM_CAP_USER_MEMORY"},
		{gokvm.CapSetTSSAddr, "KVM_CAP_SET_TSS_ADDR"},
		{gokvm.CapPIT2, "KVM_CAP_PIT2"},
		{gokvm.CapIRQFD, "KVM_CAP_IRQFD"},
		{gokvm.CapIOEventFD, "KVM_CAP_IOEVENTFD"},
		{gokvm.CapImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"},
		{gokvm.CapEXTCPUID, "KVM_CAP_EXT_CPUID"},
	} {
		if n, err := s.Check(c.cap); err != nil || n == 0 {
			f.Close()
			return nil, fmt.Errorf("%w: %s lacks %s", ErrUnavailable, path, c.name)
		}
	}
	n, err := gokvm.GetVCPUMMmapSize(f.Fd())
	if err != nil || n < 4096 {
		f.Close()
		return nil, fmt.Errorf("%w: KVM_GET_VCPU_MMAP_SIZE: %d, %v", ErrUnavailable, n, err)
	}
	s.runSize = int(n)
	return s, nil
}

func (s *System) fd() int { return int(s.f.Fd()) }

// Check returns KVM_CHECK_EXTENSION for c.
func (s *System) Check(c gokvm.Capability) (int, error) {
	r, err := ioctl(s.fd(), ioctlCheckExt, uintptr(c))
	return int(r), err
}

// Close closes /dev/kvm.
func (s *System) Close() error { return s.f.Close() }

// SupportedCPUID returns the CPUID entries KVM can expose to a guest.
func (s *System) SupportedCPUID() ([]gokvm.CPUIDEntry2, error) {
	c := &gokvm.CPUID{Nent: 256, Entries: make([]gokvm.CPUIDEntry2, 256)}
	if err := gokvm.GetSupportedCPUID(s.f.Fd(), c); err != nil {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	return c.Entries[:c.Nent], nil
}

// VM is one KVM virtual machine.
type VM struct {
	sys *System
	f   *os.File
}

// CreateVM creates a VM.
func (s *System) CreateVM() (*VM, error) {
	fd, err := gokvm.CreateVM(s.f.Fd())
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	unix.CloseOnExec(int(fd))
	return &VM{sys: s, f: os.NewFile(fd, "kvm-vm")}, nil
}

// Close releases the VM.
func (v *VM) Close() error { return v.f.Close() }

func (v *VM) fd() uintptr { return v.f.Fd() }

// SetMemory maps size bytes at host address hva into the guest at gpa.
func (v *VM) SetMemory(slot uint32, gpa, size uint64, hva uintptr) error {
	r := &gokvm.UserspaceMemoryRegion{Slot: slot, GuestPhysAddr: gpa, MemorySize: size, UserspaceAddr: uint64(hva)}
	if err := gokvm.SetUserMemoryRegion(v.fd(), r); err != nil {
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
	if err := gokvm.CreatePIT2(v.fd()); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// IRQLine sets the level of an interrupt line (GSI).
func (v *VM) IRQLine(gsi uint32, level bool) error {
	l := uint32(0)
	if level {
		l = 1
	}
	return gokvm.IRQLineStatus(v.fd(), gsi, l)
}

// IRQFD makes a write to eventfd efd inject an edge on gsi without an exit
// to userspace (KVM_IRQFD).
func (v *VM) IRQFD(efd int, gsi uint32) error {
	var b [32]byte
	binary.LittleEndian.PutUint32(b[0:], uint32(efd))
	binary.LittleEndian.PutUint32(b[4:], gsi)
	if _, err := ioctl(int(v.fd()), ioctlIRQFD, uintptr(unsafe.Pointer(&b[0]))); err != nil {
		return fmt.Errorf("KVM_IRQFD gsi %d: %w", gsi, err)
	}
	return nil
}

// IOEventFD makes a guest write of length size to addr signal efd instead of
// exiting to userspace (KVM_IOEVENTFD). pio selects port I/O over MMIO.
func (v *VM) IOEventFD(efd int, addr uint64, size uint32, pio bool) error {
	var b [64]byte
	binary.LittleEndian.PutUint64(b[8:], addr)
	binary.LittleEndian.PutUint32(b[16:], size)
	binary.LittleEndian.PutUint32(b[20:], uint32(efd))
	var flags uint32
	if pio {
		flags |= 1 << 1 // KVM_IOEVENTFD_FLAG_PIO
	}
	binary.LittleEndian.PutUint32(b[24:], flags)
	if _, err := ioctl(int(v.fd()), ioctlIOEventFD, uintptr(unsafe.Pointer(&b[0]))); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD %#x: %w", addr, err)
	}
	return nil
}

// hostAddr is the address KVM maps for a slice backed by an mmap (never
// the Go heap, which may move).
func hostAddr(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
