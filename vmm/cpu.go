package vmm

import (
	"github.com/ember-vmm/ember/boot"
	"github.com/ember-vmm/ember/vmm/kvm"
)

// MSRs set at reset, as firmware would leave them (Intel SDM vol. 4).
const (
	msrTSC          = 0x10
	msrSysenterCS   = 0x174
	msrSysenterESP  = 0x175
	msrSysenterEIP  = 0x176
	msrMiscEnable   = 0x1a0
	msrMTRRDefType  = 0x2ff
	msrSTAR         = 0xc0000081
	msrLSTAR        = 0xc0000082
	msrCSTAR        = 0xc0000083
	msrSyscallMask  = 0xc0000084
	msrKernelGSBase = 0xc0000102

	miscEnableFastString = 1 << 0
	// MTRRs on, default type write-back: without it all RAM is uncached
	// and the guest crawls.
	mtrrEnableWB = 1<<11 | 6
)

// cpuidFor returns the CPUID table for vCPU id out of n: KVM's supported
// leaves with the APIC ID, topology and hypervisor bit filled in, and
// XSAVE hidden if noXSAVE.
func cpuidFor(supported []kvm.CPUIDEntry, id, n int, noXSAVE bool) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, 0, len(supported)+2)
	hasHV := false
	for _, e := range supported {
		if noXSAVE {
			if e.Function == 0xd {
				continue
			}
			hideXSAVE(&e)
		}
		switch e.Function {
		case 1:
			// EBX[31:24] initial APIC ID, EBX[23:16] logical processors.
			e.EBX = e.EBX&0x0000ffff | uint32(id)<<24 | uint32(n)<<16
			e.ECX |= 1 << 31 // running under a hypervisor
			if n > 1 {
				e.EDX |= 1 << 28 // HTT: the count above is valid
			}
		case 0xb, 0x1f:
			e.EDX = uint32(id) // x2APIC ID
		case 0x40000000:
			hasHV = true
		}
		out = append(out, e)
	}
	if !hasHV {
		// "KVMKVMKVM\0\0\0": guests then use kvm-clock and PV features.
		out = append(out, kvm.CPUIDEntry{Function: 0x40000000, EAX: 0x40000001,
			EBX: 0x4b4d564b, ECX: 0x564b4d56, EDX: 0x4d})
	}
	return out
}

// hideXSAVE clears, in one CPUID entry, XSAVE and every feature whose
// state only XSAVE manages: AVX and its successors, FMA, F16C, AMX, PKU.
// The guest then keeps its FPU and SSE state with FXSAVE and never sets
// XCR0.
//
// Why: QEMU's software emulator does not intercept XSETBV in a guest of
// the SVM guest it emulates, so under --accel nested the L1 KVM never
// learns the XCR0 the inner guest sets. It reports the XSAVE area size
// for the reset XCR0 (every stock kernel then warns, and panics with
// --panic-on-warn) and loads that XCR0 (x87 only) on each entry: AVX
// faults and the guest's XSAVE stops saving SSE registers across context
// switches.
func hideXSAVE(e *kvm.CPUIDEntry) {
	switch {
	case e.Function == 1:
		// FMA, XSAVE, OSXSAVE, AVX, F16C.
		e.ECX &^= 1<<12 | 1<<26 | 1<<27 | 1<<28 | 1<<29
	case e.Function == 7 && e.Index == 0:
		// AVX2, AVX-512 F/DQ/IFMA/PF/ER/CD/BW/VL.
		e.EBX &^= 1<<5 | 1<<16 | 1<<17 | 1<<21 | 1<<26 | 1<<27 | 1<<28 | 1<<30 | 1<<31
		// AVX-512 VBMI, PKU, OSPKE, VBMI2, VAES, VPCLMULQDQ, VNNI,
		// BITALG, VPOPCNTDQ.
		e.ECX &^= 1<<1 | 1<<3 | 1<<4 | 1<<6 | 1<<9 | 1<<10 | 1<<11 | 1<<12 | 1<<14
		// AVX-512 4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, AVX-512 FP16,
		// AMX-TILE, AMX-INT8.
		e.EDX &^= 1<<2 | 1<<3 | 1<<8 | 1<<22 | 1<<23 | 1<<24 | 1<<25
	case e.Function == 7 && e.Index == 1:
		// AVX-VNNI, AVX-512 BF16.
		e.EAX &^= 1<<4 | 1<<5
	case e.Function == 0x80000001:
		// XOP, FMA4.
		e.ECX &^= 1<<11 | 1<<16
	}
}

func setupVCPU(c *kvm.VCPU, supported []kvm.CPUIDEntry, n int, e *boot.Entry, noXSAVE bool) error {
	if err := c.SetCPUID(cpuidFor(supported, c.ID, n, noXSAVE)); err != nil {
		return err
	}
	if err := c.SetMSRs([]kvm.MSR{
		{Index: msrSysenterCS}, {Index: msrSysenterESP}, {Index: msrSysenterEIP},
		{Index: msrSTAR}, {Index: msrCSTAR}, {Index: msrKernelGSBase},
		{Index: msrSyscallMask}, {Index: msrLSTAR}, {Index: msrTSC},
		{Index: msrMiscEnable, Value: miscEnableFastString},
		{Index: msrMTRRDefType, Value: mtrrEnableWB},
	}); err != nil {
		return err
	}
	if err := c.SetFPU(); err != nil {
		return err
	}
	if err := c.SetupLINT(); err != nil {
		return err
	}
	if c.ID != 0 {
		// Application processors wait in the in-kernel LAPIC for the
		// guest's INIT/SIPI.
		return nil
	}
	s, err := c.GetSregs()
	if err != nil {
		return err
	}
	st := e.BSP
	s.CS = segment(st.CS)
	s.DS, s.ES, s.FS, s.GS, s.SS = segment(st.DS), segment(st.DS), segment(st.DS), segment(st.DS), segment(st.DS)
	s.TR = segment(st.TR)
	s.GDT.Base, s.GDT.Limit = st.GDT.Base, st.GDT.Limit
	s.IDT.Base, s.IDT.Limit = st.IDT.Base, st.IDT.Limit
	s.CR0, s.CR3, s.CR4, s.EFER = st.CR0, st.CR3, st.CR4, st.EFER
	if err := c.SetSregs(s); err != nil {
		return err
	}
	return c.SetRegs(&kvm.Regs{RIP: st.RIP, RSP: st.RSP, RSI: st.RSI, RBX: st.RBX, RFLAGS: st.RFLAGS})
}

func segment(s boot.Segment) kvm.Segment {
	return kvm.Segment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type,
		Present: s.Present, DPL: s.DPL, DB: s.DB, S: s.S, L: s.L, G: s.G, AVL: s.AVL}
}
