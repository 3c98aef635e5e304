// Package platform is the one description of ember's x86-64 machine: where
// RAM may go, the interrupt controllers, every device's ports or MMIO
// window, its interrupt and its identity for the guest. Bus registration,
// the e820 map, the MP and ACPI tables (the DSDT through package aml) and
// the kernel command line are all derived from it, so a fact is written
// once. Devices that come and go with the configuration (virtio-mmio) are
// added with AddVirtioMMIO, which allocates their window and interrupt.
package platform

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/ember-vmm/ember/boot"
	"github.com/ember-vmm/ember/boot/aml"
	"github.com/ember-vmm/ember/guest/proto"
)

// Guest-physical layout.
const (
	// HoleStart is where the 32-bit MMIO hole begins: RAM beyond this much
	// continues at HighStart (like QEMU's and Firecracker's layouts).
	HoleStart = 0xC000_0000
	// HighStart is where RAM resumes above 4 GiB.
	HighStart = 0x1_0000_0000
	// VirtioMMIOBase is the first virtio-mmio window; each device gets
	// VirtioMMIOSize bytes, up to MaxVirtioMMIO devices.
	VirtioMMIOBase = 0xD000_0000
	VirtioMMIOSize = 0x1000
	MaxVirtioMMIO  = 64
	// TSSAddr is where KVM keeps the TSS and identity-map pages it needs
	// on Intel hosts (three pages, then one): inside the hole.
	TSSAddr = 0xFFFB_D000
	// IOAPICAddr and LAPICAddr are where KVM's in-kernel chips live.
	IOAPICAddr = 0xFEC0_0000
	LAPICAddr  = 0xFEE0_0000
	// IOAPICPins is how many GSIs KVM's I/O APIC has.
	IOAPICPins = 24
	// SleepTypeS5 is the SLP_TYP value \_S5 declares: writing
	// SleepTypeS5<<2 | SLP_EN to the sleep control port powers off.
	SleepTypeS5 = 5
)

// Space is the address space a device lives in.
type Space int

// Address spaces.
const (
	PortIO Space = iota
	MMIO
)

func (s Space) String() string {
	if s == MMIO {
		return "mmio"
	}
	return "pio"
}

// Names of the fixed devices.
const (
	COM1       = "com1"
	I8042Data  = "i8042-data"
	I8042Cmd   = "i8042-cmd"
	RTC        = "rtc"
	POST       = "post"
	Control    = "ember-control"
	ACPISleep  = "acpi-sleep"
	VirtioName = "virtio"
)

// NoGSI marks a device without an interrupt.
const NoGSI = -1

// Device is one entry of the table.
type Device struct {
	Name  string
	Space Space
	Base  uint64
	Size  uint64
	// GSI is the interrupt the device raises, or NoGSI.
	GSI int
	// HID is the ACPI hardware ID that declares the device in the DSDT
	// ("" keeps it out: the guest finds it by convention, as the i8042).
	HID string
	// UID tells devices with the same HID apart.
	UID int
	// ACPIName is the device's four-character name in the DSDT.
	ACPIName string
}

// Platform is the table for one machine.
type Platform struct {
	devices []Device
	virtio  int
}

// Errors.
var (
	ErrFull    = errors.New("no room left")
	ErrOverlap = errors.New("overlaps another device")
)

// New returns the table of fixed devices every ember machine has.
func New() *Platform {
	return &Platform{devices: []Device{
		// The 16550A UART the kernel console uses (ttyS0). ACPI names it:
		// without a legacy PIC, Linux routes ISA IRQs only for devices ACPI
		// declares.
		{Name: COM1, Space: PortIO, Base: 0x3f8, Size: 8, GSI: 4, HID: "PNP0501", UID: 1, ACPIName: "COM1"},
		// The i8042's reset line (command 0xfe) ends the VM.
		{Name: I8042Data, Space: PortIO, Base: 0x60, Size: 1, GSI: NoGSI},
		{Name: I8042Cmd, Space: PortIO, Base: 0x64, Size: 1, GSI: NoGSI},
		// The CMOS clock: index and data ports.
		{Name: RTC, Space: PortIO, Base: 0x70, Size: 2, GSI: NoGSI},
		// Port 0x80 is the POST/io_delay port: writes are expected.
		{Name: POST, Space: PortIO, Base: 0x80, Size: 1, GSI: NoGSI},
		// ember's control port: exit status and boot marks from the init.
		{Name: Control, Space: PortIO, Base: proto.PortBase, Size: proto.PortCount, GSI: NoGSI},
		// Hardware-reduced ACPI sleep control and status registers.
		{Name: ACPISleep, Space: PortIO, Base: 0x0ff8, Size: 2, GSI: NoGSI},
	}}
}

// Devices returns the table in registration order.
func (p *Platform) Devices() []Device { return slices.Clone(p.devices) }

// Lookup returns the device called name.
func (p *Platform) Lookup(name string) (Device, bool) {
	for _, d := range p.devices {
		if d.Name == name {
			return d, true
		}
	}
	return Device{}, false
}

// must returns a fixed device; they are all in New's table.
func (p *Platform) must(name string) Device {
	d, ok := p.Lookup(name)
	if !ok {
		panic("platform: no fixed device " + name)
	}
	return d
}

// AddVirtioMMIO adds a virtio-mmio device called name: the next free
// window and a free interrupt (virtio 1.2 §4.2; declared in the DSDT as
// LNRO0005, as QEMU's microvm does).
func (p *Platform) AddVirtioMMIO(name string) (Device, error) {
	if _, dup := p.Lookup(name); dup {
		return Device{}, fmt.Errorf("platform: device %q added twice", name)
	}
	if p.virtio >= MaxVirtioMMIO {
		return Device{}, fmt.Errorf("platform: virtio device %q: %w (at most %d)", name, ErrFull, MaxVirtioMMIO)
	}
	gsi, err := p.freeGSI()
	if err != nil {
		return Device{}, fmt.Errorf("platform: virtio device %q: %w", name, err)
	}
	d := Device{
		Name: name, Space: MMIO, Base: VirtioMMIOBase + uint64(p.virtio)*VirtioMMIOSize, Size: VirtioMMIOSize,
		GSI: gsi, HID: "LNRO0005", UID: p.virtio, ACPIName: fmt.Sprintf("VR%02X", p.virtio),
	}
	if err := p.add(d); err != nil {
		return Device{}, err
	}
	p.virtio++
	return d, nil
}

func (p *Platform) add(d Device) error {
	for _, o := range p.devices {
		if o.Space == d.Space && d.Base < o.Base+o.Size && o.Base < d.Base+d.Size {
			return fmt.Errorf("platform: %s [%#x, %#x) %w %s", d.Name, d.Base, d.Base+d.Size, ErrOverlap, o.Name)
		}
	}
	p.devices = append(p.devices, d)
	return nil
}

// freeGSI picks the lowest interrupt from 5 up that no device uses. The
// ISA interrupts below 5 (timer, keyboard, cascade, COM2, COM1) stay out
// of the pool.
func (p *Platform) freeGSI() (int, error) {
	used := map[int]bool{}
	for _, d := range p.devices {
		used[d.GSI] = true
	}
	for g := 5; g < IOAPICPins; g++ {
		if !used[g] {
			return g, nil
		}
	}
	return 0, fmt.Errorf("%w: all %d I/O APIC pins are in use", ErrFull, IOAPICPins)
}

// RAM lays size bytes of RAM out around the 32-bit hole.
func RAM(size uint64) []boot.Range {
	if size <= HoleStart {
		return []boot.Range{{Start: 0, Size: size}}
	}
	return []boot.Range{{Start: 0, Size: HoleStart}, {Start: HighStart, Size: size - HoleStart}}
}

// DSDT is the AML body of the DSDT: \_S5 for power-off, then every device
// with an ACPI identity under \_SB (ACPI 6.4 §5.2.11.1, §7.4.2).
func (p *Platform) DSDT() []byte {
	b := aml.Name(`\_S5_`, aml.Package(aml.Int(SleepTypeS5), aml.Int(SleepTypeS5), aml.Int(0), aml.Int(0)))
	var devs [][]byte
	for _, d := range p.devices {
		if d.HID == "" {
			continue
		}
		devs = append(devs, deviceAML(d))
	}
	if len(devs) > 0 {
		b = append(b, aml.Scope(`\_SB_`, devs...)...)
	}
	return b
}

func deviceAML(d Device) []byte {
	hid := aml.String(d.HID)
	if len(d.HID) == 7 && d.HID[:3] == "PNP" {
		hid = aml.EISAID(d.HID)
	}
	var res [][]byte
	switch d.Space {
	case PortIO:
		res = append(res, aml.IO(uint16(d.Base), uint16(d.Base), 0, uint8(d.Size)))
		if d.GSI != NoGSI {
			res = append(res, aml.IRQNoFlags(uint8(d.GSI)))
		}
	case MMIO:
		res = append(res, aml.Memory32Fixed(true, uint32(d.Base), uint32(d.Size)))
		if d.GSI != NoGSI {
			res = append(res, aml.Interrupt(aml.EdgeTriggered, aml.ActiveHigh, uint32(d.GSI)))
		}
	}
	return aml.Device(d.ACPIName,
		aml.Name("_HID", hid),
		aml.Name("_UID", aml.Int(uint64(d.UID))),
		aml.Name("_CRS", aml.ResourceTemplate(res...)))
}

// Boot is what the loader writes into the MP and ACPI tables.
func (p *Platform) Boot() boot.Platform {
	s := p.must(ACPISleep)
	return boot.Platform{
		LAPIC: LAPICAddr, IOAPIC: IOAPICAddr,
		ACPI: &boot.ACPI{DSDT: p.DSDT(), SleepControl: uint16(s.Base), SleepStatus: uint16(s.Base + 1)},
	}
}

// Cmdline is the kernel command line the machine needs, before the user's
// additions: the console on COM1 (ttyS0); reboot through the i8042, whose
// reset ends the VM; an immediate reboot on panic, so a panicking guest
// ends promptly; no PCI probing (there is no PCI bus: probing only costs
// exits); no i8042 probing beyond the controller (no keyboard or
// mouse behind it); one 8250 port, COM1, the only one there is (the
// default four cost a probe and a tty device each for COM2-4); and the
// kernel's LOCK prefixes left as they are. An SMP kernel that finds one
// CPU rewrites every LOCK prefix in its text, one text_poke each (about
// 2,800 in the minimal kernel, 8,800 in Debian's), and each poke switches
// page tables twice and faults on its temporary mapping: under shadow
// paging (a guest of a nested KVM) that was 80-90 % of a one-vCPU boot's
// exits. Atomics keep a prefix that costs a few cycles; with more vCPUs
// the kernel patches nothing anyway.
func (p *Platform) Cmdline() string {
	return "console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 noreplace-smp"
}

// VirtioCmdline declares the virtio-mmio devices on the command line
// (virtio_mmio.device=<size>@<base>:<irq>, read by kernels built with
// CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES), for kernels that do not read the
// DSDT. "" when there are none.
func (p *Platform) VirtioCmdline() string {
	var parts []string
	for _, d := range p.devices {
		if d.HID == "LNRO0005" {
			parts = append(parts, fmt.Sprintf("virtio_mmio.device=%dK@%#x:%d", d.Size>>10, d.Base, d.GSI))
		}
	}
	return strings.Join(parts, " ")
}
