package boot

import (
	"encoding/binary"
	"fmt"
	"io"
)

// MP table (Intel MultiProcessor Specification 1.4, chapter 4): a floating
// pointer (§4.1) in the last KiB of base memory, where Linux scans for it,
// and a configuration table (§4.2-4.3) listing every CPU, the ISA bus, the
// I/O APIC and how ISA interrupts reach it (identity, as KVM's default GSI
// routing wires them). The table for 254 CPUs is over 5 KiB, so it lives at
// AddrMPConfig rather than right after the pointer.
const (
	mpFloatSize  = 16
	mpHeaderSize = 44
	mpCPUSize    = 20
	mpEntrySize  = 8
	mpSpecRev    = 4 // version 1.4

	// Entry types (§4.3, Table 4-3).
	mpProcessor = 0
	mpBus       = 1
	mpIOAPIC    = 2
	mpIOIntr    = 3
	mpLocalIntr = 4
	// Interrupt types (Table 4-10).
	mpIntINT    = 0
	mpIntNMI    = 1
	mpIntExtINT = 3
	// Processor flags (Table 4-5).
	mpCPUEnabled = 1 << 0
	mpCPUBSP     = 1 << 1

	apicVersion   = 0x14 // KVM's local APIC
	ioapicVersion = 0x11 // KVM's I/O APIC
	isaIRQs       = 16
	allLAPICs     = 0xff
)

// checksum returns the byte that makes b (with that byte zero) sum to 0.
func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

// mpConfigTable builds the MP configuration table for cpus CPUs.
func mpConfigTable(cpus int, pf Platform) ([]byte, error) {
	ioapicID := byte(cpus)
	le := binary.LittleEndian
	t := make([]byte, mpHeaderSize, mpHeaderSize+cpus*mpCPUSize+(2+isaIRQs+2)*mpEntrySize)
	for i := 0; i < cpus; i++ {
		flags := byte(mpCPUEnabled)
		if i == 0 {
			flags |= mpCPUBSP
		}
		t = append(t, mpProcessor, byte(i), apicVersion, flags)
		t = le.AppendUint32(t, 0x600) // CPU signature: family 6
		t = le.AppendUint32(t, 0x201) // feature flags: FPU, APIC
		t = append(t, make([]byte, 8)...)
	}
	t = append(t, mpBus, 0, 'I', 'S', 'A', ' ', ' ', ' ')
	t = append(t, mpIOAPIC, ioapicID, ioapicVersion, 1) // enabled
	t = le.AppendUint32(t, pf.IOAPIC)
	for irq := byte(0); irq < isaIRQs; irq++ {
		// Flags 0: polarity and trigger conform to the bus (ISA: edge, high).
		t = append(t, mpIOIntr, mpIntINT, 0, 0, 0, irq, ioapicID, irq)
	}
	t = append(t, mpLocalIntr, mpIntExtINT, 0, 0, 0, 0, allLAPICs, 0) // → LINT0
	t = append(t, mpLocalIntr, mpIntNMI, 0, 0, 0, 0, allLAPICs, 1)    // → LINT1

	copy(t[0:4], "PCMP")
	le.PutUint16(t[4:], uint16(len(t)))
	t[6] = mpSpecRev
	copy(t[8:16], "EMBER   ")
	copy(t[16:28], "MICROVM     ")
	le.PutUint16(t[34:], uint16(cpus+1+1+isaIRQs+2))
	le.PutUint32(t[36:], pf.LAPIC)
	t[7] = checksum(t)
	if AddrMPConfig+len(t) > HighMemStart {
		return nil, fmt.Errorf("MP configuration table of %d bytes does not fit below 1 MiB", len(t))
	}
	return t, nil
}

// writeMPTable writes the floating pointer and the configuration table t.
func writeMPTable(m io.WriterAt, t []byte) error {
	f := make([]byte, mpFloatSize)
	copy(f[0:4], "_MP_")
	binary.LittleEndian.PutUint32(f[4:], AddrMPConfig)
	f[8] = 1 // length in 16-byte units
	f[9] = mpSpecRev
	f[10] = checksum(f)
	if _, err := m.WriteAt(f, AddrMP); err != nil {
		return err
	}
	_, err := m.WriteAt(t, AddrMPConfig)
	return err
}
