package boot

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// acpiTables walks RSDP → XSDT and returns every table by signature,
// checking each checksum.
func acpiTables(t *testing.T, m *fakeMem, rsdpAddr uint64) map[string][]byte {
	t.Helper()
	r := read(t, m, rsdpAddr, rsdpSize)
	if string(r[:8]) != "RSD PTR " || checksum(r[:20]) != 0 || checksum(r) != 0 || r[rsdpOffRevision] != 2 ||
		binary.LittleEndian.Uint32(r[rsdpOffLength:]) != rsdpSize || rsdpAddr%16 != 0 || rsdpAddr < 0xe0000 || rsdpAddr >= 0x100000 {
		t.Fatalf("RSDP at %#x: % x", rsdpAddr, r)
	}
	table := func(addr uint64) []byte {
		h := read(t, m, addr, acpiHeaderSize)
		b := read(t, m, addr, int(binary.LittleEndian.Uint32(h[hdrOffLength:])))
		if checksum(b) != 0 {
			t.Errorf("table %q at %#x: checksum does not sum to 0", b[:4], addr)
		}
		if string(b[hdrOffOEMID:hdrOffOEMID+6]) != acpiOEMID {
			t.Errorf("table %q: OEM ID %q", b[:4], b[hdrOffOEMID:hdrOffOEMID+6])
		}
		return b
	}
	xsdt := table(binary.LittleEndian.Uint64(r[rsdpOffXSDT:]))
	out := map[string][]byte{"XSDT": xsdt}
	for o := acpiHeaderSize; o+8 <= len(xsdt); o += 8 {
		b := table(binary.LittleEndian.Uint64(xsdt[o:]))
		out[string(b[:4])] = b
	}
	if f := out["FACP"]; f != nil {
		out["DSDT"] = table(binary.LittleEndian.Uint64(f[fadtOffXDSDT:]))
	}
	return out
}

func TestACPITables(t *testing.T) {
	for _, cpus := range []int{1, 4, MaxCPUs} {
		m := newMem(64 << 20)
		e, err := ld(tp{Kernel: synthBzImage(4096), CPUs: cpus, Mem: m, ACPI: true, AML: []byte{0xa3}})
		if err != nil {
			t.Fatal(err)
		}
		if got := binary.LittleEndian.Uint64(zeroPage(t, m)[zpACPIRSDP:]); got != AddrACPI || e.RSDP != AddrACPI {
			t.Fatalf("acpi_rsdp_addr %#x, entry %#x", got, e.RSDP)
		}
		ts := acpiTables(t, m, e.RSDP)
		for _, sig := range []string{"XSDT", "FACP", "APIC", "DSDT"} {
			if ts[sig] == nil {
				t.Fatalf("%d cpus: no %s", cpus, sig)
			}
		}
		le := binary.LittleEndian
		f := ts["FACP"]
		if len(f) != 276 || f[hdrOffRevision] != 6 || le.Uint32(f[fadtOffFlags:])&fadtHWReduced == 0 ||
			le.Uint16(f[fadtOffIAPCBoot:]) != 1<<2|1<<5 || string(f[fadtOffHypervisor:fadtOffHypervisor+8]) != "EMBERVMM" ||
			le.Uint32(f[40:]) != 0 {
			t.Fatalf("FADT % x", f)
		}
		// SLEEP_CONTROL_REG / SLEEP_STATUS_REG: System I/O, 8 bits, byte access.
		if !bytes.Equal(f[fadtOffSleepCtl:fadtOffSleepCtl+gasSize], []byte{1, 8, 0, 1, 0xf8, 0x0f, 0, 0, 0, 0, 0, 0}) ||
			!bytes.Equal(f[fadtOffSleepSts:fadtOffSleepSts+gasSize], []byte{1, 8, 0, 1, 0xf9, 0x0f, 0, 0, 0, 0, 0, 0}) {
			t.Fatalf("sleep registers % x", f[fadtOffSleepCtl:fadtOffSleepSts+gasSize])
		}
		d := ts["DSDT"]
		if want := testPlatform(true, []byte{0xa3}).ACPI.DSDT; !bytes.Equal(d[acpiHeaderSize:], want) {
			t.Fatalf("DSDT body % x", d[acpiHeaderSize:])
		}
		a := ts["APIC"]
		if le.Uint32(a[madtOffLAPIC:]) != testLAPIC || le.Uint32(a[madtOffFlags:]) != 0 {
			t.Fatalf("MADT header % x", a[:madtHeaderSize])
		}
		var lapics, ioapics int
		for o := madtHeaderSize; o < len(a); o += int(a[o+1]) {
			if a[o+1] < 2 {
				t.Fatalf("MADT entry at %d has length %d", o, a[o+1])
			}
			switch a[o] {
			case madtLAPIC:
				if a[o+2] != byte(lapics) || a[o+3] != byte(lapics) || le.Uint32(a[o+4:]) != 1 {
					t.Errorf("LAPIC entry % x", a[o:o+8])
				}
				lapics++
			case madtIOAPIC:
				if a[o+2] != byte(cpus) || le.Uint32(a[o+4:]) != testIOAPIC || le.Uint32(a[o+8:]) != 0 {
					t.Errorf("I/O APIC entry % x", a[o:o+12])
				}
				ioapics++
			}
		}
		if lapics != cpus || ioapics != 1 {
			t.Errorf("MADT lists %d LAPICs and %d I/O APICs for %d cpus", lapics, ioapics, cpus)
		}
		checkMPTable(t, m, cpus)
	}
}

func checkMPTable(t *testing.T, m *fakeMem, cpus int) {
	t.Helper()
	f := read(t, m, AddrMP, 16)
	if string(f[:4]) != "_MP_" || checksum(f) != 0 || f[8] != 1 || f[9] != 4 {
		t.Fatalf("MP floating pointer % x", f)
	}
	cfg := uint64(binary.LittleEndian.Uint32(f[4:]))
	hdr := read(t, m, cfg, mpHeaderSize)
	tbl := read(t, m, cfg, int(binary.LittleEndian.Uint16(hdr[4:])))
	if string(tbl[:4]) != "PCMP" || checksum(tbl) != 0 || binary.LittleEndian.Uint32(tbl[36:]) != testLAPIC {
		t.Fatalf("MP table header % x", tbl[:mpHeaderSize])
	}
	n := int(binary.LittleEndian.Uint16(tbl[34:]))
	counts := map[byte]int{}
	o := mpHeaderSize
	for i := 0; i < n; i++ {
		typ := tbl[o]
		counts[typ]++
		switch typ {
		case mpProcessor:
			id := tbl[o+1]
			wantFlags := byte(1)
			if id == 0 {
				wantFlags = 3
			}
			if int(id) != counts[typ]-1 || tbl[o+3] != wantFlags {
				t.Errorf("processor entry % x", tbl[o:o+20])
			}
			o += mpCPUSize
			continue
		case mpIOAPIC:
			if tbl[o+1] != byte(cpus) || tbl[o+2] != 0x11 || binary.LittleEndian.Uint32(tbl[o+4:]) != testIOAPIC {
				t.Errorf("I/O APIC entry % x", tbl[o:o+8])
			}
		case mpIOIntr:
			irq := byte(counts[typ] - 1)
			if tbl[o+5] != irq || tbl[o+6] != byte(cpus) || tbl[o+7] != irq {
				t.Errorf("I/O interrupt entry % x", tbl[o:o+8])
			}
		case mpLocalIntr:
			if !(tbl[o+1] == mpIntExtINT && tbl[o+7] == 0) && !(tbl[o+1] == mpIntNMI && tbl[o+7] == 1) {
				t.Errorf("local interrupt entry % x", tbl[o:o+8])
			}
		}
		o += mpEntrySize
	}
	if o != len(tbl) || counts[mpProcessor] != cpus || counts[mpBus] != 1 || counts[mpIOAPIC] != 1 ||
		counts[mpIOIntr] != 16 || counts[mpLocalIntr] != 2 {
		t.Errorf("MP entries %v, end %d of %d", counts, o, len(tbl))
	}
}

func TestMPTableWithoutACPI(t *testing.T) {
	m := newMem(32 << 20)
	if _, err := ld(tp{Kernel: synthELF(elfSpec{}), CPUs: 2, Mem: m}); err != nil {
		t.Fatal(err)
	}
	checkMPTable(t, m, 2)
	if r := read(t, m, AddrACPI, 8); !bytes.Equal(r, make([]byte, 8)) {
		t.Error("ACPI tables written without Params.ACPI")
	}
}
