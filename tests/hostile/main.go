// Command hostile runs inside a guest and misbehaves on purpose: it writes
// garbage to every I/O port (plain and string I/O) and reads and writes
// unmapped MMIO addresses. The VMM must survive all of it. "hostile halt"
// instead halts the machine the way a kernel without ACPI powers off
// (every CPU in HLT with interrupts off, nobody told).
package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

func outb(port uint16, v uint8)
func outw(port uint16, v uint16)
func outl(port uint16, v uint32)
func inb(port uint16) uint8
func inl(port uint16) uint32
func outsb(port uint16, p *byte, n int)
func insb(port uint16, p *byte, n int)

// skip lists ports whose garbage would end the test early for legitimate
// reasons (reset, power-off, exit status) or wreck the in-kernel
// interrupt controllers and timer the guest kernel needs to keep running.
func skip(p int) bool {
	switch {
	case p == 0x64: // i8042 command: 0xfe resets the VM
	case p >= 0x20 && p <= 0x21, p >= 0xa0 && p <= 0xa1, p >= 0x4d0 && p <= 0x4d1: // PIC, ELCR
	case p >= 0x40 && p <= 0x43: // PIT
	case p >= 0x0ff0 && p <= 0x0ff3: // ember control: exit status
	case p >= 0x0ff8 && p <= 0x0ff9: // ACPI sleep: power-off
	case p >= 0x3f8 && p <= 0x3ff: // COM1 carries this program's output (fuzzed in unit tests)
	default:
		return false
	}
	return true
}

// emberPort reports ports where ember itself emulates a device.
func emberPort(p int) bool {
	return p == 0x60 || p == 0x70 || p == 0x71 || p == 0x80 || (p >= 0x0ff0 && p < 0x1000)
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "halt" {
		unix.Sync()
		err := unix.Reboot(unix.LINUX_REBOOT_CMD_HALT)
		fmt.Fprintln(os.Stderr, "hostile: reboot(HALT):", err)
		os.Exit(2)
	}
	if err := unix.Iopl(3); err != nil {
		fmt.Fprintln(os.Stderr, "hostile: iopl:", err)
		os.Exit(2)
	}
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 16)
	n := 0
	for p := 0; p < 0x10000; p++ {
		if skip(p) {
			continue
		}
		// Every port gets a byte written and read; ember's own ports and
		// every 256th also wide and string I/O. String I/O is emulated
		// instruction by instruction by the (nested) hypervisor, the
		// slowest and least robust path under software emulation, so it
		// is sampled rather than applied everywhere.
		port := uint16(p)
		outb(port, uint8(r.Uint32()))
		_ = inb(port)
		if p%256 == 0 || emberPort(p) {
			outw(port, uint16(r.Uint32()))
			outl(port, r.Uint32())
			_ = inl(port)
			for i := range buf {
				buf[i] = byte(r.Uint32())
			}
			outsb(port, &buf[0], len(buf))
			insb(port, &buf[0], len(buf))
		}
		n++
	}
	m := mmio(r)
	v := virtioWindows(r)
	msg := fmt.Sprintf("hostile: done: %d ports, %d mmio accesses, %d virtio register writes\n", n, m, v)
	// The garbage reached the console device that carries stdout too: say
	// it on the serial console as well (ember's stderr).
	fmt.Print(msg)
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		f.WriteString(msg)
		f.Close()
	}
}

// virtioWindows unbinds the guest's virtio-mmio drivers (so /dev/mem may
// map their windows) and writes garbage to the transports' registers with
// the 32-bit accesses they take: status, feature and queue registers,
// doorbells. ember must refuse or contain all of it.
func virtioWindows(r *rand.Rand) int {
	devs, _ := filepath.Glob("/sys/bus/platform/drivers/virtio-mmio/LNRO0005:*")
	for _, d := range devs {
		if err := os.WriteFile("/sys/bus/platform/drivers/virtio-mmio/unbind", []byte(filepath.Base(d)), 0); err != nil {
			fmt.Fprintln(os.Stderr, "hostile: unbind", filepath.Base(d), err)
		}
	}
	var bases []int64
	for i := range len(devs) {
		bases = append(bases, int64(0xd000_0000+0x1000*i))
	}
	return eachPage(bases, func(mem []byte) int {
		for range 512 {
			off := r.IntN(0x100/4) * 4
			// A 32-bit MMIO store needs a pointer into the mapping.
			atomic.StoreUint32((*uint32)(unsafe.Pointer(&mem[off])), r.Uint32())
			_ = atomic.LoadUint32((*uint32)(unsafe.Pointer(&mem[r.IntN(0x100/4)*4])))
		}
		return 512
	})
}

// eachPage maps the 4 KiB at each guest-physical base through /dev/mem,
// hands it to poke and adds up poke's counts.
func eachPage(bases []int64, poke func([]byte) int) int {
	f, err := os.OpenFile("/dev/mem", os.O_RDWR|os.O_SYNC, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostile: /dev/mem:", err)
		return 0
	}
	defer f.Close()
	n := 0
	for _, base := range bases {
		mem, err := unix.Mmap(int(f.Fd()), base, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			fmt.Fprintf(os.Stderr, "hostile: mmap %#x: %v\n", base, err)
			continue
		}
		n += poke(mem)
		unix.Munmap(mem)
	}
	return n
}

// mmio pokes guest-physical addresses where no device lives.
func mmio(r *rand.Rand) int {
	return eachPage([]int64{0xd000_0000, 0xe000_0000, 0xfe00_0000, 0xfed0_0000}, func(mem []byte) int {
		for i := 0; i < 256; i++ {
			off := r.IntN(4096 - 8)
			mem[off] = byte(r.Uint32())
			_ = mem[off+1]
		}
		return 512
	})
}
