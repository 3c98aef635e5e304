package platform

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ember-vmm/ember/boot"
)

func TestFixedTableDisjoint(t *testing.T) {
	p := New()
	ds := p.Devices()
	if len(ds) < 7 {
		t.Fatalf("%d fixed devices", len(ds))
	}
	for i, a := range ds {
		for _, b := range ds[i+1:] {
			if a.Space == b.Space && a.Base < b.Base+b.Size && b.Base < a.Base+a.Size {
				t.Errorf("%s and %s overlap", a.Name, b.Name)
			}
			if a.GSI != NoGSI && a.GSI == b.GSI {
				t.Errorf("%s and %s share GSI %d", a.Name, b.Name, a.GSI)
			}
		}
	}
	if d, ok := p.Lookup(COM1); !ok || d.Base != 0x3f8 || d.GSI != 4 {
		t.Fatalf("COM1 = %+v", d)
	}
}

func TestAddVirtioMMIO(t *testing.T) {
	p := New()
	var got []Device
	for i := 0; ; i++ {
		d, err := p.AddVirtioMMIO("virtio" + string(rune('a'+i)))
		if err != nil {
			if !errors.Is(err, ErrFull) {
				t.Fatal(err)
			}
			break
		}
		got = append(got, d)
	}
	// GSIs 5..23: nineteen devices, then the pins run out.
	if len(got) != IOAPICPins-5 {
		t.Fatalf("%d virtio devices fit, want %d", len(got), IOAPICPins-5)
	}
	for i, d := range got {
		if d.Base != VirtioMMIOBase+uint64(i)*VirtioMMIOSize || d.GSI != 5+i || d.HID != "LNRO0005" || d.UID != i {
			t.Errorf("device %d = %+v", i, d)
		}
		if d.Base+d.Size > IOAPICAddr || d.Base < HoleStart {
			t.Errorf("device %d window [%#x, %#x) outside the hole below the I/O APIC", i, d.Base, d.Base+d.Size)
		}
	}
	if _, err := p.AddVirtioMMIO("virtioa"); err == nil {
		t.Fatal("a duplicate name was accepted")
	}
}

func TestRAM(t *testing.T) {
	if r := RAM(512 << 20); len(r) != 1 || r[0] != (boot.Range{Start: 0, Size: 512 << 20}) {
		t.Fatalf("RAM(512M) = %v", r)
	}
	if r := RAM(4 << 30); len(r) != 2 || r[0].End() != HoleStart || r[1].Start != HighStart || r[1].Size != 1<<30 {
		t.Fatalf("RAM(4G) = %v", r)
	}
}

// TestDSDT pins the DSDT of the fixed machine: \_S5 and COM1 as iasl
// compiles them (the COM1 bytes are what ember shipped hand-assembled).
func TestDSDT(t *testing.T) {
	want := []byte{
		0x08, 0x5c, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00,
		0x10, 0x33, '\\', '_', 'S', 'B', '_',
		0x5b, 0x82, 0x2b, 'C', 'O', 'M', '1',
		0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x05, 0x01,
		0x08, '_', 'U', 'I', 'D', 0x01,
		0x08, '_', 'C', 'R', 'S', 0x11, 0x10, 0x0a, 0x0d,
		0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08,
		0x22, 0x10, 0x00,
		0x79, 0x00,
	}
	if got := New().DSDT(); !bytes.Equal(got, want) {
		t.Fatalf("DSDT\n got % x\nwant % x", got, want)
	}
}

func TestBoot(t *testing.T) {
	p := New()
	b := p.Boot()
	if b.LAPIC != LAPICAddr || b.IOAPIC != IOAPICAddr || b.ACPI == nil ||
		b.ACPI.SleepControl != 0xff8 || b.ACPI.SleepStatus != 0xff9 || !bytes.Equal(b.ACPI.DSDT, p.DSDT()) {
		t.Fatalf("Boot() = %+v", b)
	}
	if !strings.Contains(p.Cmdline(), "console=ttyS0") {
		t.Fatalf("cmdline %q has no console on COM1", p.Cmdline())
	}
	// One serial port emulated, one registered by the guest.
	if !strings.Contains(p.Cmdline(), "8250.nr_uarts=1") {
		t.Fatalf("cmdline %q lets the guest probe COM2-4", p.Cmdline())
	}
	// A one-vCPU guest does not rewrite its LOCK prefixes one by one.
	if !strings.Contains(p.Cmdline(), "noreplace-smp") {
		t.Fatalf("cmdline %q lets a one-vCPU guest patch every LOCK prefix", p.Cmdline())
	}
}

// TestDSDTDisassembles compiles nothing: it hands the DSDT with two virtio
// devices to ACPICA's disassembler (Debian: acpica-tools), which must
// understand every byte.
func TestDSDTDisassembles(t *testing.T) {
	iasl, err := exec.LookPath("iasl")
	if err != nil {
		t.Skip("SKIP: iasl not installed (Debian: acpica-tools); TestDSDT pins the bytes instead")
	}
	p := New()
	for _, n := range []string{"blk0", "net0"} {
		if _, err := p.AddVirtioMMIO(n); err != nil {
			t.Fatal(err)
		}
	}
	body := p.DSDT()
	tbl := make([]byte, 36, 36+len(body))
	tbl = append(tbl, body...)
	copy(tbl, "DSDT")
	binary.LittleEndian.PutUint32(tbl[4:], uint32(len(tbl)))
	tbl[8] = 2
	copy(tbl[10:], "EMBER EMBERVM ")
	var sum byte
	for _, c := range tbl {
		sum += c
	}
	tbl[9] = -sum
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dsdt.dat"), tbl, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(iasl, "-d", "dsdt.dat")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("iasl -d: %v\n%s", err, out)
	}
	dsl, err := os.ReadFile(filepath.Join(dir, "dsdt.dsl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`Name (\_S5, Package (0x04)`,
		`Device (COM1)`, `EisaId ("PNP0501")`, `IO (Decode16,`, `IRQNoFlags ()`,
		`Device (VR00)`, `Device (VR01)`, `Name (_HID, "LNRO0005")`,
		`Memory32Fixed (ReadWrite,`, `0xD0001000,`, `Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )`,
	} {
		if !strings.Contains(string(dsl), want) {
			t.Errorf("disassembly lacks %q:\n%s", want, dsl)
		}
	}
}

// TestVirtioCmdline: each virtio-mmio device, as the kernel's
// virtio_mmio.device= parser reads it (<size>@<base>:<irq>).
func TestVirtioCmdline(t *testing.T) {
	p := New()
	if got := p.VirtioCmdline(); got != "" {
		t.Fatalf("no virtio devices: %q, want empty", got)
	}
	a, _ := p.AddVirtioMMIO("blk0")
	b, _ := p.AddVirtioMMIO("rng")
	want := fmt.Sprintf("virtio_mmio.device=4K@%#x:%d virtio_mmio.device=4K@%#x:%d", a.Base, a.GSI, b.Base, b.GSI)
	if got := p.VirtioCmdline(); got != want {
		t.Fatalf("VirtioCmdline() = %q, want %q", got, want)
	}
}
