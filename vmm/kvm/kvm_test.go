package kvm

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// usable reports whether /dev/kvm is backed by hardware virtualization;
// a paravirtual KVM opens fine but cannot run these guests.
func usable(t *testing.T) {
	t.Helper()
	ci, _ := os.ReadFile("/proc/cpuinfo")
	if !bytes.Contains(ci, []byte(" svm")) && !bytes.Contains(ci, []byte(" vmx")) {
		t.Skip("SKIP: no hardware-backed /dev/kvm here (the end-to-end suite covers this package through --accel nested)")
	}
}

func TestIoctlNumbers(t *testing.T) {
	// _IOW(KVMIO, nr, size) from include/uapi/linux/kvm.h.
	for _, c := range []struct {
		got, want uintptr
		name      string
	}{
		{ioctlIRQFD, 0x4020ae76, "KVM_IRQFD"},
		{ioctlIOEventFD, 0x4040ae79, "KVM_IOEVENTFD"},
		{ioctlSetFPU, 0x41a0ae8d, "KVM_SET_FPU"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

// TestRealModeGuest runs "mov dx,0x3f8; mov al,'A'; out dx,al; hlt".
func TestRealModeGuest(t *testing.T) {
	usable(t)
	s, err := Open("/dev/kvm")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	mem, err := unix.Mmap(-1, 0, 0x1000, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	copy(mem, []byte{0xba, 0xf8, 0x03, 0xb0, 'A', 0xee, 0xf4})
	if err := vm.SetMemory(0, 0x1000, 0x1000, hostAddr(mem)); err != nil {
		t.Fatal(err)
	}
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sr, err := c.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	sr.CS.Base, sr.CS.Selector = 0, 0
	if err := c.SetSregs(sr); err != nil {
		t.Fatal(err)
	}
	if err := c.SetRegs(&Regs{RIP: 0x1000, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	if r := c.ExitReason(); r != ExitIO {
		t.Fatalf("exit %s, want io", ExitName(r))
	}
	io, err := c.IO()
	if err != nil || !io.Out || io.Port != 0x3f8 || io.Size != 1 || string(io.Data) != "A" {
		t.Fatalf("io exit = %+v, %v", io, err)
	}
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	if r := c.ExitReason(); r != ExitHLT {
		t.Fatalf("exit %s, want hlt", ExitName(r))
	}
	c.SetImmediateExit(true)
	if err := c.Run(); !errors.Is(err, ErrInterrupted) {
		t.Fatalf("Run with immediate_exit = %v, want ErrInterrupted", err)
	}
}
