package kvm

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// uapi lists every size and offset ember relies on, with the value from
// include/uapi/linux/kvm.h (x86-64) and the C expression that yields it.
// TestUAPILayouts checks the Go side against the values; TestUAPIHeaders
// compiles the expressions against the installed headers.
var uapi = []struct {
	c    string
	want uintptr
	got  uintptr
}{
	{"sizeof(struct kvm_regs)", 144, unsafe.Sizeof(Regs{})},
	{"offsetof(struct kvm_regs, rip)", 128, unsafe.Offsetof(Regs{}.RIP)},
	{"offsetof(struct kvm_regs, rflags)", 136, unsafe.Offsetof(Regs{}.RFLAGS)},
	{"sizeof(struct kvm_segment)", 24, unsafe.Sizeof(Segment{})},
	{"offsetof(struct kvm_segment, selector)", 12, unsafe.Offsetof(Segment{}.Selector)},
	{"offsetof(struct kvm_segment, type)", 14, unsafe.Offsetof(Segment{}.Type)},
	{"offsetof(struct kvm_segment, avl)", 21, unsafe.Offsetof(Segment{}.AVL)},
	{"offsetof(struct kvm_segment, unusable)", 22, unsafe.Offsetof(Segment{}.Unusable)},
	{"sizeof(struct kvm_dtable)", 16, unsafe.Sizeof(DTable{})},
	{"sizeof(struct kvm_sregs)", 312, unsafe.Sizeof(Sregs{})},
	{"offsetof(struct kvm_sregs, tr)", 144, unsafe.Offsetof(Sregs{}.TR)},
	{"offsetof(struct kvm_sregs, gdt)", 192, unsafe.Offsetof(Sregs{}.GDT)},
	{"offsetof(struct kvm_sregs, idt)", 208, unsafe.Offsetof(Sregs{}.IDT)},
	{"offsetof(struct kvm_sregs, cr0)", 224, unsafe.Offsetof(Sregs{}.CR0)},
	{"offsetof(struct kvm_sregs, efer)", 264, unsafe.Offsetof(Sregs{}.EFER)},
	{"offsetof(struct kvm_sregs, apic_base)", 272, unsafe.Offsetof(Sregs{}.APICBase)},
	{"offsetof(struct kvm_sregs, interrupt_bitmap)", 280, unsafe.Offsetof(Sregs{}.InterruptBitmap)},
	{"sizeof(struct kvm_cpuid_entry2)", 40, unsafe.Sizeof(CPUIDEntry{})},
	{"offsetof(struct kvm_cpuid_entry2, eax)", 12, unsafe.Offsetof(CPUIDEntry{}.EAX)},
	{"offsetof(struct kvm_cpuid_entry2, edx)", 24, unsafe.Offsetof(CPUIDEntry{}.EDX)},
	{"offsetof(struct kvm_cpuid2, entries)", 8, 8},
	{"sizeof(struct kvm_msr_entry)", 16, unsafe.Sizeof(msrEntry{})},
	{"offsetof(struct kvm_msr_entry, data)", 8, unsafe.Offsetof(msrEntry{}.Data)},
	{"offsetof(struct kvm_msrs, entries)", 8, 8},
	{"sizeof(struct kvm_userspace_memory_region)", 32, unsafe.Sizeof(userMemoryRegion{})},
	{"offsetof(struct kvm_userspace_memory_region, userspace_addr)", 24, unsafe.Offsetof(userMemoryRegion{}.UserspaceAddr)},
	{"sizeof(struct kvm_irq_level)", 8, unsafe.Sizeof(irqLevel{})},
	{"sizeof(struct kvm_irqfd)", 32, unsafe.Sizeof(irqfd{})},
	{"offsetof(struct kvm_irqfd, gsi)", 4, unsafe.Offsetof(irqfd{}.GSI)},
	{"offsetof(struct kvm_irqfd, flags)", 8, unsafe.Offsetof(irqfd{}.Flags)},
	{"offsetof(struct kvm_irqfd, resamplefd)", 12, unsafe.Offsetof(irqfd{}.ResampleFD)},
	{"KVM_IRQFD_FLAG_DEASSIGN", 1, irqfdDeassign},
	{"KVM_IRQFD_FLAG_RESAMPLE", 2, irqfdResample},
	{"sizeof(struct kvm_ioeventfd)", 64, unsafe.Sizeof(ioeventfd{})},
	{"offsetof(struct kvm_ioeventfd, addr)", 8, unsafe.Offsetof(ioeventfd{}.Addr)},
	{"offsetof(struct kvm_ioeventfd, len)", 16, unsafe.Offsetof(ioeventfd{}.Len)},
	{"offsetof(struct kvm_ioeventfd, fd)", 20, unsafe.Offsetof(ioeventfd{}.FD)},
	{"offsetof(struct kvm_ioeventfd, flags)", 24, unsafe.Offsetof(ioeventfd{}.Flags)},
	{"KVM_IOEVENTFD_FLAG_DATAMATCH", 1, ioeventfdDataMatch},
	{"KVM_IOEVENTFD_FLAG_PIO", 2, ioeventfdPIO},
	{"KVM_IOEVENTFD_FLAG_DEASSIGN", 4, ioeventfdDeassign},
	{"sizeof(struct kvm_fpu)", 416, unsafe.Sizeof(fpu{})},
	{"offsetof(struct kvm_fpu, fcw)", 128, unsafe.Offsetof(fpu{}.FCW)},
	{"offsetof(struct kvm_fpu, last_ip)", 136, unsafe.Offsetof(fpu{}.LastIP)},
	{"offsetof(struct kvm_fpu, xmm)", 152, unsafe.Offsetof(fpu{}.XMM)},
	{"offsetof(struct kvm_fpu, mxcsr)", 408, unsafe.Offsetof(fpu{}.MXCSR)},
	{"sizeof(struct kvm_pit_config)", 64, unsafe.Sizeof(pitConfig{})},
	{"sizeof(struct kvm_lapic_state)", 1024, unsafe.Sizeof(lapicState{})},
	{"sizeof(struct kvm_mp_state)", 4, 4},
	{"offsetof(struct kvm_run, immediate_exit)", 1, runImmediateExit},
	{"offsetof(struct kvm_run, exit_reason)", 8, runExitReason},
	{"offsetof(struct kvm_run, io)", 32, runExitData},
	{"offsetof(struct kvm_run, io.direction)", 32, runIODirection},
	{"offsetof(struct kvm_run, io.size)", 33, runIOSize},
	{"offsetof(struct kvm_run, io.port)", 34, runIOPort},
	{"offsetof(struct kvm_run, io.count)", 36, runIOCount},
	{"offsetof(struct kvm_run, io.data_offset)", 40, runIODataOffset},
	{"KVM_EXIT_IO_OUT", 1, ioDirectionOut},
	{"offsetof(struct kvm_run, mmio.phys_addr)", 32, runMMIOPhysAddr},
	{"offsetof(struct kvm_run, mmio.data)", 40, runMMIOData},
	{"offsetof(struct kvm_run, mmio.len)", 48, runMMIOLen},
	{"offsetof(struct kvm_run, mmio.is_write)", 52, runMMIOIsWrite},
	{"offsetof(struct kvm_run, system_event.type)", 32, runSystemEventType},
	{"offsetof(struct kvm_run, system_event.ndata)", 36, runSystemEventNData},
	{"offsetof(struct kvm_run, system_event.data)", 40, runSystemEventData},
	{"offsetof(struct kvm_run, fail_entry.hardware_entry_failure_reason)", 32, runFailEntryReason},
	{"offsetof(struct kvm_run, internal.suberror)", 32, runInternalSuberror},
	{"KVM_SYSTEM_EVENT_SHUTDOWN", 1, SystemEventShutdown},
	{"KVM_SYSTEM_EVENT_RESET", 2, SystemEventReset},
	{"KVM_SYSTEM_EVENT_CRASH", 3, SystemEventCrash},
	{"KVM_MP_STATE_RUNNABLE", 0, uintptr(MPStateRunnable)},
	{"KVM_MP_STATE_UNINITIALIZED", 1, uintptr(MPStateUninitialized)},
	{"KVM_MP_STATE_INIT_RECEIVED", 2, uintptr(MPStateInitReceived)},
	{"KVM_MP_STATE_HALTED", 3, uintptr(MPStateHalted)},
	{"KVM_MP_STATE_SIPI_RECEIVED", 4, uintptr(MPStateSIPIReceived)},
	{"KVM_EXIT_IO", 2, ExitIO},
	{"KVM_EXIT_HLT", 5, ExitHLT},
	{"KVM_EXIT_MMIO", 6, ExitMMIO},
	{"KVM_EXIT_SHUTDOWN", 8, ExitShutdown},
	{"KVM_EXIT_FAIL_ENTRY", 9, ExitFailEntry},
	{"KVM_EXIT_INTERNAL_ERROR", 17, ExitInternalError},
	{"KVM_EXIT_SYSTEM_EVENT", 24, ExitSystemEvent},
	{"KVM_CAP_IRQFD", 32, CapIRQFD},
	{"KVM_CAP_IOEVENTFD", 36, CapIOEventFD},
	{"KVM_CAP_IMMEDIATE_EXIT", 136, CapImmediateExit},
	{"KVM_CAP_MP_STATE", 14, CapMPState},
	{"KVM_GET_REGS", 0x8090ae81, ioctlGetRegs},
	{"KVM_SET_REGS", 0x4090ae82, ioctlSetRegs},
	{"KVM_GET_SREGS", 0x8138ae83, ioctlGetSregs},
	{"KVM_SET_SREGS", 0x4138ae84, ioctlSetSregs},
	{"KVM_SET_MSRS", 0x4008ae89, ioctlSetMSRs},
	{"KVM_SET_CPUID2", 0x4008ae90, ioctlSetCPUID2},
	{"KVM_GET_SUPPORTED_CPUID", 0xc008ae05, ioctlGetSupportedCID},
	{"KVM_SET_USER_MEMORY_REGION", 0x4020ae46, ioctlSetUserMemory},
	{"KVM_IRQ_LINE", 0x4008ae61, ioctlIRQLine},
	{"KVM_IRQFD", 0x4020ae76, ioctlIRQFD},
	{"KVM_CREATE_PIT2", 0x4040ae77, ioctlCreatePIT2},
	{"KVM_IOEVENTFD", 0x4040ae79, ioctlIOEventFD},
	{"KVM_SET_FPU", 0x41a0ae8d, ioctlSetFPU},
	{"KVM_GET_LAPIC", 0x8400ae8e, ioctlGetLAPIC},
	{"KVM_SET_LAPIC", 0x4400ae8f, ioctlSetLAPIC},
	{"KVM_GET_MP_STATE", 0x8004ae98, ioctlGetMPState},
	{"KVM_RUN", 0xae80, ioctlRun},
	{"KVM_CHECK_EXTENSION", 0xae03, ioctlCheckExtension},
	{"KVM_GET_API_VERSION", 0xae00, ioctlGetVersion},
}

func TestUAPILayouts(t *testing.T) {
	for _, u := range uapi {
		if u.got != u.want {
			t.Errorf("%s: ember has %#x, the UAPI value is %#x", u.c, u.got, u.want)
		}
	}
}

// TestUAPIHeaders compiles the expressions of uapi against the installed
// <linux/kvm.h>, so the table above cannot drift from the kernel's.
func TestUAPIHeaders(t *testing.T) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("SKIP: no C compiler to read <linux/kvm.h> with; TestUAPILayouts still pins the values")
	}
	if _, err := os.Stat("/usr/include/linux/kvm.h"); err != nil {
		t.Skip("SKIP: no /usr/include/linux/kvm.h (Debian: linux-libc-dev); TestUAPILayouts still pins the values")
	}
	var src bytes.Buffer
	src.WriteString("#include <stddef.h>\n#include <stdio.h>\n#include <linux/kvm.h>\nint main(void) {\n")
	for i, u := range uapi {
		src.WriteString("\tprintf(\"" + strconv.Itoa(i) + " %lu\\n\", (unsigned long)(" + u.c + "));\n")
	}
	src.WriteString("\treturn 0;\n}\n")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "uapi.c"), src.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "uapi")
	if out, err := exec.Command(cc, "-o", bin, filepath.Join(dir, "uapi.c")).CombinedOutput(); err != nil {
		t.Fatalf("compiling against <linux/kvm.h>: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		i, _ := strconv.Atoi(f[0])
		v, _ := strconv.ParseUint(f[1], 10, 64)
		if uintptr(v) != uapi[i].want {
			t.Errorf("%s is %#x in <linux/kvm.h>, the table says %#x", uapi[i].c, v, uapi[i].want)
		}
		seen++
	}
	if seen != len(uapi) {
		t.Fatalf("read %d values, want %d", seen, len(uapi))
	}
}
