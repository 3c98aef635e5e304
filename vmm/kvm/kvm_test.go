package kvm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// usable skips unless /dev/kvm is backed by hardware virtualization; a
// paravirtual KVM opens fine but cannot run these guests. The end-to-end
// suite runs this package's tests inside the nested L1 guest, where KVM is
// real, and fails if they skip there.
func usable(t *testing.T) {
	t.Helper()
	if !HardwareBacked() {
		t.Skip("SKIP: no hardware-backed /dev/kvm here (the end-to-end suite runs these tests inside the nested L1 guest)")
	}
}

func TestHasVirtFlag(t *testing.T) {
	for in, want := range map[string]bool{
		"processor: 0\nflags\t\t: fpu vme svm lm\n": true,
		"flags\t\t: fpu vmx\n":                      true,
		"flags\t\t: fpu hypervisor svm_lock\n":      false,
		"model name: x\n":                           false,
	} {
		if got := hasVirtFlag([]byte(in)); got != want {
			t.Errorf("hasVirtFlag(%q) = %v", in, got)
		}
	}
}

func TestDecodeIO(t *testing.T) {
	run := make([]byte, 4096)
	run[runIODirection] = ioDirectionOut
	run[runIOSize] = 2
	binary.LittleEndian.PutUint16(run[runIOPort:], 0x3f8)
	binary.LittleEndian.PutUint32(run[runIOCount:], 3)
	binary.LittleEndian.PutUint64(run[runIODataOffset:], 4096-6)
	io, err := decodeIO(run, 0)
	if err != nil || !io.Out || io.Size != 2 || io.Port != 0x3f8 || io.Count != 3 || len(io.Data) != 6 {
		t.Fatalf("decodeIO = %+v, %v", io, err)
	}
	for _, bad := range []struct {
		name        string
		size        byte
		count       uint32
		off         uint64
		wantMessage string
	}{
		{"past the end", 4, 2, 4096 - 4, "bad io exit"},
		{"huge offset", 1, 1, 1 << 63, "bad io exit"},
		{"overflowing count", 4, 1 << 31, 64, "bad io exit"},
		{"size 3", 3, 1, 64, "bad io exit"},
		{"size 0", 0, 1, 64, "bad io exit"},
	} {
		run[runIOSize] = bad.size
		binary.LittleEndian.PutUint32(run[runIOCount:], bad.count)
		binary.LittleEndian.PutUint64(run[runIODataOffset:], bad.off)
		if _, err := decodeIO(run, 0); err == nil || !strings.Contains(err.Error(), bad.wantMessage) {
			t.Errorf("%s: err = %v", bad.name, err)
		}
	}
}

func TestDecodeMMIO(t *testing.T) {
	run := make([]byte, 4096)
	binary.LittleEndian.PutUint64(run[runMMIOPhysAddr:], 0xd000_0050)
	binary.LittleEndian.PutUint32(run[runMMIOLen:], 4)
	run[runMMIOIsWrite] = 1
	copy(run[runMMIOData:], []byte{1, 2, 3, 4})
	m, err := decodeMMIO(run, 0)
	if err != nil || m.Addr != 0xd000_0050 || !m.Write || !bytes.Equal(m.Data, []byte{1, 2, 3, 4}) {
		t.Fatalf("decodeMMIO = %+v, %v", m, err)
	}
	for _, n := range []uint32{0, 9, 1 << 31} {
		binary.LittleEndian.PutUint32(run[runMMIOLen:], n)
		if _, err := decodeMMIO(run, 0); err == nil {
			t.Errorf("len %d accepted", n)
		}
	}
}

func TestDecodeSystemEvent(t *testing.T) {
	run := make([]byte, 4096)
	binary.LittleEndian.PutUint32(run[runSystemEventType:], SystemEventCrash)
	binary.LittleEndian.PutUint32(run[runSystemEventNData:], 1000) // more than the union holds
	binary.LittleEndian.PutUint64(run[runSystemEventData:], 7)
	e := decodeSystemEvent(run)
	if e.Type != SystemEventCrash || len(e.Data) != 16 || e.Data[0] != 7 {
		t.Fatalf("decodeSystemEvent = %+v", e)
	}
}

func TestIOEventEncode(t *testing.T) {
	a, err := IOEvent{Addr: 0xd000_0050, Len: 4, Match: true, Data: 3}.encode(9, false)
	if err != nil || a.Addr != 0xd000_0050 || a.Len != 4 || a.FD != 9 || a.DataMatch != 3 || a.Flags != ioeventfdDataMatch {
		t.Fatalf("encode = %+v, %v", a, err)
	}
	a, err = IOEvent{Addr: 0x500, Len: 1, PIO: true}.encode(3, true)
	if err != nil || a.Flags != ioeventfdPIO|ioeventfdDeassign {
		t.Fatalf("encode PIO deassign = %+v, %v", a, err)
	}
	for _, bad := range []IOEvent{
		{Addr: 1, Len: 3},
		{Addr: 1, Len: 0, PIO: true},
		{Addr: 1, Len: 0, Match: true},
		{Addr: ^uint64(0), Len: 4},
	} {
		if _, err := bad.encode(3, false); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// testVM is a one-vCPU VM running code in real mode at 0x1000.
type testVM struct {
	sys *System
	vm  *VM
	cpu *VCPU
	mem []byte
}

func newTestVM(t *testing.T, code []byte, irqchip bool) *testVM {
	t.Helper()
	usable(t)
	s, err := Open("/dev/kvm")
	if err != nil {
		t.Fatal(err)
	}
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(-1, 0, 0x10000, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	copy(mem[0x1000:], code)
	if err := vm.SetMemory(0, 0, uint64(len(mem)), HostAddr(mem)); err != nil {
		t.Fatal(err)
	}
	if irqchip {
		if err := vm.SetupX86(0xfffb_d000); err != nil {
			t.Fatal(err)
		}
	}
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
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
	tv := &testVM{sys: s, vm: vm, cpu: c, mem: mem}
	t.Cleanup(func() {
		c.Close()
		vm.Close()
		unix.Munmap(mem)
		s.Close()
	})
	return tv
}

func wantExit(t *testing.T, c *VCPU, reason uint32) {
	t.Helper()
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	if r := c.ExitReason(); r != reason {
		t.Fatalf("exit %s, want %s", ExitName(r), ExitName(reason))
	}
}

// TestRealModeGuest runs "mov dx,0x3f8; mov al,'A'; out dx,al; hlt".
func TestRealModeGuest(t *testing.T) {
	v := newTestVM(t, []byte{0xba, 0xf8, 0x03, 0xb0, 'A', 0xee, 0xf4}, false)
	c := v.cpu
	wantExit(t, c, ExitIO)
	io, err := c.IO()
	if err != nil || !io.Out || io.Port != 0x3f8 || io.Size != 1 || string(io.Data) != "A" {
		t.Fatalf("io exit = %+v, %v", io, err)
	}
	wantExit(t, c, ExitHLT)
	c.SetImmediateExit(true)
	if err := c.Run(); !errors.Is(err, ErrInterrupted) {
		t.Fatalf("Run with immediate_exit = %v, want ErrInterrupted", err)
	}
}

// TestIOEventDataMatch: a write of the matching value signals the eventfd
// without an exit; another value exits to userspace as usual.
func TestIOEventDataMatch(t *testing.T) {
	// mov dx,0x500; mov al,1; out dx,al; mov al,2; out dx,al; hlt
	v := newTestVM(t, []byte{0xba, 0x00, 0x05, 0xb0, 1, 0xee, 0xb0, 2, 0xee, 0xf4}, false)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	ev := IOEvent{Addr: 0x500, Len: 1, PIO: true, Match: true, Data: 1}
	if err := v.vm.AddIOEvent(efd, ev); err != nil {
		t.Fatal(err)
	}
	wantExit(t, v.cpu, ExitIO)
	io, err := v.cpu.IO()
	if err != nil || io.Port != 0x500 || io.Data[0] != 2 {
		t.Fatalf("first exit %+v, %v: want the write of 2 (the write of 1 belongs to the eventfd)", io, err)
	}
	var b [8]byte
	if n, err := unix.Read(efd, b[:]); err != nil || n != 8 || binary.LittleEndian.Uint64(b[:]) != 1 {
		t.Fatalf("eventfd read %d %v %x, want count 1", n, err, b)
	}
	if err := v.vm.RemoveIOEvent(efd, ev); err != nil {
		t.Fatal(err)
	}
	if err := v.vm.RemoveIOEvent(efd, ev); err == nil {
		t.Fatal("removing twice succeeded")
	}
}

// TestSetMSRsRefused: KVM stops at an MSR it does not know; ember must say
// so instead of reporting success (KVM_SET_MSRS returns a count, not an
// error).
func TestSetMSRsRefused(t *testing.T) {
	v := newTestVM(t, []byte{0xf4}, false)
	err := v.cpu.SetMSRs([]MSR{{Index: 0x174}, {Index: 0xdead_beef, Value: 1}, {Index: 0x175}})
	if err == nil || !strings.Contains(err.Error(), "0xdeadbeef") || !strings.Contains(err.Error(), "1 of 3") {
		t.Fatalf("SetMSRs with an unknown MSR: %v", err)
	}
	if err := v.cpu.SetMSRs([]MSR{{Index: 0x174}, {Index: 0x175}}); err != nil {
		t.Fatal(err)
	}
}

// TestIRQFDResample registers a level-triggered irqfd with a resample fd
// and removes it again.
func TestIRQFDResample(t *testing.T) {
	v := newTestVM(t, []byte{0xf4}, true)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	rfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rfd)
	if err := v.vm.IRQFD(efd, 5, rfd); err != nil {
		t.Fatal(err)
	}
	if err := v.vm.RemoveIRQFD(efd, 5); err != nil {
		t.Fatal(err)
	}
	if err := v.vm.IRQFD(efd, 6, -1); err != nil {
		t.Fatal(err)
	}
}

// TestHaltedForGood: with the in-kernel LAPIC, "cli; hlt" blocks inside
// KVM_RUN. A signal brings the vCPU out, and KVM's MP state says halted
// with interrupts off: nothing but an NMI or INIT could wake it.
func TestHaltedForGood(t *testing.T) {
	v := newTestVM(t, []byte{0xfa, 0xf4}, true)
	c := v.cpu
	if s, err := c.MPState(); err != nil || s != MPStateRunnable {
		t.Fatalf("MP state before running = %d, %v; want runnable", s, err)
	}
	tid := make(chan int, 1)
	res := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		for {
			err := c.Run()
			if errors.Is(err, ErrInterrupted) {
				res <- nil
				return
			}
			if err != nil {
				res <- err
				return
			}
			if r := c.ExitReason(); r != ExitIntr {
				res <- errors.New("unexpected exit " + ExitName(r))
				return
			}
		}
	}()
	id := <-tid
	time.Sleep(200 * time.Millisecond) // let it reach the hlt
	c.SetImmediateExit(true)
	if err := unix.Tgkill(unix.Getpid(), id, unix.SIGURG); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-res:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the signal did not bring the vCPU out of KVM_RUN")
	}
	if s, err := c.MPState(); err != nil || s != MPStateHalted {
		t.Fatalf("MP state = %d, %v; want halted", s, err)
	}
	r, err := c.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	if r.RFLAGS&(1<<9) != 0 {
		t.Fatalf("RFLAGS %#x has IF set after cli", r.RFLAGS)
	}
}
