package boot

import (
	"encoding/binary"
	"fmt"
)

// ACPI tables (ACPI 6.4, chapter 5): a hardware-reduced platform (§4.1) with
// an RSDP that Linux finds by scanning 0xE0000-0xFFFFF (§5.2.5.1), an XSDT,
// a FADT whose sleep registers are the ports of the machine's power device,
// a MADT listing the local APICs and the I/O APIC, and the DSDT the machine
// supplies.
const (
	acpiHeaderSize = 36
	acpiOEMID      = "EMBER "   // 6 bytes
	acpiOEMTableID = "EMBERVM " // 8 bytes
	acpiCreatorID  = "EMBR"
	acpiAlign      = 16

	// RSDP (§5.2.5.3).
	rsdpSize         = 36
	rsdpChecksumLen  = 20 // the ACPI 1.0 checksum covers the first 20 bytes
	rsdpRevision     = 2
	rsdpOffChecksum  = 8
	rsdpOffOEMID     = 9
	rsdpOffRevision  = 15
	rsdpOffLength    = 20
	rsdpOffXSDT      = 24
	rsdpOffExtChksum = 32

	// Header (§5.2.6, Table 5.4).
	hdrOffLength   = 4
	hdrOffRevision = 8
	hdrOffChecksum = 9
	hdrOffOEMID    = 10
	hdrOffOEMTable = 16
	hdrOffOEMRev   = 24
	hdrOffCreator  = 28
	hdrOffCreatRev = 32

	// FADT (§5.2.9, Table 5.9), revision 6.
	fadtSize          = 276
	fadtRevision      = 6
	fadtMinorRevision = 4
	fadtOffIAPCBoot   = 109
	fadtOffFlags      = 112
	fadtOffMinor      = 131
	fadtOffXDSDT      = 140
	fadtOffSleepCtl   = 244
	fadtOffSleepSts   = 256
	fadtOffHypervisor = 268
	// IAPC_BOOT_ARCH (Table 5.11): no VGA, no CMOS RTC; no 8042 bit, so
	// Linux skips probing for a keyboard (ember's i8042 only does reset).
	iapcVGANotPresent = 1 << 2
	iapcNoCMOSRTC     = 1 << 5
	fadtHWReduced     = 1 << 20 // Table 5.10, HW_REDUCED_ACPI
	hypervisorVendor  = "EMBERVMM"

	// Generic Address Structure (§5.2.3.2).
	gasSize        = 12
	gasSystemIO    = 1
	gasAccessByte  = 1
	madtRevision   = 5
	xsdtRevision   = 1
	dsdtRevision   = 2 // 64-bit AML integers
	madtOffLAPIC   = 36
	madtOffFlags   = 40
	madtHeaderSize = 44

	// MADT structures (§5.2.12, Table 5.21).
	madtLAPIC       = 0
	madtIOAPIC      = 1
	madtLAPICNMI    = 4
	madtLAPICLen    = 8
	madtIOAPICLen   = 12
	madtLAPICNMILen = 6
	madtEnabled     = 1 << 0
	acpiAllCPUs     = 0xff
)

// acpiTable prefixes body with a table header and fixes the checksum.
func acpiTable(sig string, rev byte, body []byte) []byte {
	t := make([]byte, acpiHeaderSize, acpiHeaderSize+len(body))
	t = append(t, body...)
	copy(t[0:4], sig)
	binary.LittleEndian.PutUint32(t[hdrOffLength:], uint32(len(t)))
	t[hdrOffRevision] = rev
	copy(t[hdrOffOEMID:], acpiOEMID)
	copy(t[hdrOffOEMTable:], acpiOEMTableID)
	binary.LittleEndian.PutUint32(t[hdrOffOEMRev:], 1)
	copy(t[hdrOffCreator:], acpiCreatorID)
	binary.LittleEndian.PutUint32(t[hdrOffCreatRev:], 1)
	t[hdrOffChecksum] = checksum(t)
	return t
}

// gas encodes an 8-bit System I/O register at port.
func gas(port uint64) []byte {
	b := []byte{gasSystemIO, 8, 0, gasAccessByte}
	return binary.LittleEndian.AppendUint64(b, port)
}

func fadt(dsdt uint64, a *ACPI) []byte {
	b := make([]byte, fadtSize-acpiHeaderSize)
	at := func(off int) []byte { return b[off-acpiHeaderSize:] }
	le := binary.LittleEndian
	le.PutUint16(at(fadtOffIAPCBoot), iapcVGANotPresent|iapcNoCMOSRTC)
	le.PutUint32(at(fadtOffFlags), fadtHWReduced)
	at(fadtOffMinor)[0] = fadtMinorRevision
	le.PutUint64(at(fadtOffXDSDT), dsdt) // DSDT (32-bit) stays 0 when X_DSDT is set
	copy(at(fadtOffSleepCtl), gas(uint64(a.SleepControl)))
	copy(at(fadtOffSleepSts), gas(uint64(a.SleepStatus)))
	copy(at(fadtOffHypervisor), hypervisorVendor)
	return acpiTable("FACP", fadtRevision, b)
}

func madt(cpus int, pf Platform) []byte {
	b := make([]byte, madtHeaderSize-acpiHeaderSize)
	le := binary.LittleEndian
	le.PutUint32(b[madtOffLAPIC-acpiHeaderSize:], pf.LAPIC)
	le.PutUint32(b[madtOffFlags-acpiHeaderSize:], 0) // no PCAT_COMPAT
	for i := 0; i < cpus; i++ {
		// Processor UID = APIC ID = i.
		b = append(b, madtLAPIC, madtLAPICLen, byte(i), byte(i))
		b = le.AppendUint32(b, madtEnabled)
	}
	b = append(b, madtIOAPIC, madtIOAPICLen, byte(cpus), 0)
	b = le.AppendUint32(b, pf.IOAPIC)
	b = le.AppendUint32(b, 0) // GSI base
	// NMI on LINT1 of every CPU; flags 0: conforms to the bus.
	b = append(b, madtLAPICNMI, madtLAPICNMILen, acpiAllCPUs, 0, 0, 1)
	return acpiTable("APIC", madtRevision, b)
}

func rsdp(xsdt uint64) []byte {
	b := make([]byte, rsdpSize)
	copy(b, "RSD PTR ")
	copy(b[rsdpOffOEMID:], acpiOEMID)
	b[rsdpOffRevision] = rsdpRevision
	binary.LittleEndian.PutUint32(b[rsdpOffLength:], rsdpSize)
	binary.LittleEndian.PutUint64(b[rsdpOffXSDT:], xsdt)
	b[rsdpOffChecksum] = checksum(b[:rsdpChecksumLen])
	b[rsdpOffExtChksum] = checksum(b)
	return b
}

// acpiBlob lays the tables out from AddrACPI, RSDP first, and returns them
// as one block (the RSDP at its start).
func acpiBlob(cpus int, pf Platform, a *ACPI) ([]byte, error) {
	var blob []byte
	place := func(t []byte) uint64 {
		for len(blob)%acpiAlign != 0 {
			blob = append(blob, 0)
		}
		addr := AddrACPI + uint64(len(blob))
		blob = append(blob, t...)
		return addr
	}
	blob = make([]byte, rsdpSize) // filled in last
	dsdtAddr := place(acpiTable("DSDT", dsdtRevision, a.DSDT))
	fadtAddr := place(fadt(dsdtAddr, a))
	madtAddr := place(madt(cpus, pf))
	xsdt := binary.LittleEndian.AppendUint64(nil, fadtAddr)
	xsdt = binary.LittleEndian.AppendUint64(xsdt, madtAddr)
	xsdtAddr := place(acpiTable("XSDT", xsdtRevision, xsdt))
	copy(blob, rsdp(xsdtAddr))
	if AddrACPI+len(blob) > AddrMPConfig {
		return nil, fmt.Errorf("%d bytes of ACPI tables do not fit between %#x and %#x", len(blob), AddrACPI, AddrMPConfig)
	}
	return blob, nil
}
