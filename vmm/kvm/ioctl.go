package kvm

import (
	"unsafe"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// ioctl numbers (include/uapi/linux/kvm.h), built with gokvm's _IO* helpers.
// Each size is the UAPI struct's; TestIoctlNumbers pins the results.
var (
	ioctlGetVersion      = gokvm.IIO(0x00)
	ioctlCheckExtension  = gokvm.IIO(0x03)
	ioctlGetSupportedCID = gokvm.IIOWR(0x05, 8) // struct kvm_cpuid2 (header only)
	ioctlSetUserMemory   = gokvm.IIOW(0x46, sizeofUserMemoryRegion)
	ioctlIRQLine         = gokvm.IIOW(0x61, 8) // struct kvm_irq_level
	ioctlIRQFD           = gokvm.IIOW(0x76, sizeofIRQFD)
	ioctlCreatePIT2      = gokvm.IIOW(0x77, sizeofPITConfig)
	ioctlIOEventFD       = gokvm.IIOW(0x79, sizeofIOEventFD)
	ioctlRun             = gokvm.IIO(0x80)
	ioctlGetRegs         = gokvm.IIOR(0x81, sizeofRegs)
	ioctlSetRegs         = gokvm.IIOW(0x82, sizeofRegs)
	ioctlGetSregs        = gokvm.IIOR(0x83, sizeofSregs)
	ioctlSetSregs        = gokvm.IIOW(0x84, sizeofSregs)
	ioctlSetMSRs         = gokvm.IIOW(0x89, 8) // struct kvm_msrs (header only)
	ioctlSetFPU          = gokvm.IIOW(0x8d, sizeofFPU)
	ioctlGetLAPIC        = gokvm.IIOR(0x8e, sizeofLAPIC)
	ioctlSetLAPIC        = gokvm.IIOW(0x8f, sizeofLAPIC)
	ioctlSetCPUID2       = gokvm.IIOW(0x90, 8) // struct kvm_cpuid2 (header only)
	ioctlGetMPState      = gokvm.IIOR(0x98, 4)
)

// ioctl issues an ioctl whose argument is a plain integer.
func ioctl(fd, req, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// ioctlPtr issues an ioctl whose argument points to memory the kernel reads
// or writes. arg travels as an unsafe.Pointer, which the runtime updates if
// the goroutine's stack moves, and becomes a uintptr only inside the
// argument list of unix.Syscall (an assembly function): the unsafe.Pointer
// rules (case 4) keep the object alive and in place until the call returns.
// Passing a uintptr through an ordinary function, as gokvm's Ioctl does,
// gives no such guarantee.
func ioctlPtr(fd, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(arg))
	if errno != 0 {
		return r, errno
	}
	return r, nil
}
