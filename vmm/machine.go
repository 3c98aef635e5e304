// Package vmm assembles and runs a virtual machine: KVM, guest memory, the
// devices on their buses, the loaded kernel, and one OS thread per vCPU.
package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ember-vmm/ember/boot"
	"github.com/ember-vmm/ember/devices/acpipm"
	"github.com/ember-vmm/ember/devices/control"
	"github.com/ember-vmm/ember/devices/i8042"
	"github.com/ember-vmm/ember/devices/rtc"
	"github.com/ember-vmm/ember/devices/serial"
	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/vmm/bus"
	"github.com/ember-vmm/ember/vmm/kvm"
	"github.com/ember-vmm/ember/vmm/memory"
	"github.com/ember-vmm/ember/vmm/ratelimit"
	"golang.org/x/sys/unix"
)

// Config is a fully resolved machine description: every path names a file.
type Config struct {
	Kernel  string // bzImage or ELF vmlinux
	Initrd  string // "" for none
	Extra   []byte // appended to the initrd (e.g. the run archive)
	Cmdline string // appended to ember's own command line
	CPUs    int
	Memory  uint64 // bytes
	KVMPath string // default /dev/kvm

	Console io.Writer // guest serial output; nil discards
	Input   io.Reader // host input for the serial console; nil for none
	Log     *slog.Logger
}

// Fixed platform layout.
const (
	com1Base = 0x3f8
	com1IRQ  = 4
	tssAddr  = 0xfffb_d000
	// BaseCmdline is what every guest gets before the user's additions:
	// the serial console, reboot through the i8042 (which ends the VM), an
	// immediate reboot on panic so a panicking guest ends promptly, and no
	// PCI probing (there is no PCI bus; probing only costs exits).
	BaseCmdline = "console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
)

// Machine is one VM. New prepares it, Run executes it once, Close frees it.
type Machine struct {
	cfg   Config
	log   *slog.Logger
	start time.Time

	sys   *kvm.System
	vm    *kvm.VM
	mem   *memory.Memory
	vcpus []*kvm.VCPU
	entry *boot.Entry

	pio, mmio *bus.Bus
	uart      *serial.UART
	serialIRQ int // eventfd
	console   *consoleWatch

	mu      sync.Mutex
	ended   bool
	result  Result
	endCh   chan struct{}
	tids    []atomic.Int32
	exits   [32]atomic.Uint64
	ran     bool
	closeMu sync.Mutex
	closed  bool
	unclaim *ratelimit.Limiter
}

// New creates the VM, loads the kernel and initrd, and attaches devices. It
// starts nothing; on any error everything already created is released.
func New(cfg Config) (m *Machine, err error) {
	m = &Machine{cfg: cfg, log: cfg.Log, start: time.Now(), endCh: make(chan struct{}), serialIRQ: -1,
		unclaim: ratelimit.New(10, 10*time.Second)}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if cfg.CPUs < 1 || cfg.CPUs > 254 {
		return nil, fmt.Errorf("cpus %d out of range 1..254", cfg.CPUs)
	}
	defer func() {
		if err != nil {
			m.Close()
			m = nil
		}
	}()
	kernel, err := os.ReadFile(cfg.Kernel)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	if _, err := boot.Detect(kernel); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", cfg.Kernel, err)
	}
	var initrd []byte
	if cfg.Initrd != "" {
		if initrd, err = os.ReadFile(cfg.Initrd); err != nil {
			return nil, fmt.Errorf("initrd: %w", err)
		}
	}
	if len(cfg.Extra) > 0 {
		// The kernel unpacks concatenated cpio archives in order; each must
		// start 4-byte aligned.
		for len(initrd)%4 != 0 {
			initrd = append(initrd, 0)
		}
		initrd = append(initrd, cfg.Extra...)
	}

	path := cfg.KVMPath
	if path == "" {
		path = "/dev/kvm"
	}
	if m.sys, err = kvm.Open(path); err != nil {
		return nil, err
	}
	if m.vm, err = m.sys.CreateVM(); err != nil {
		return nil, err
	}
	if m.mem, err = memory.New(cfg.Memory); err != nil {
		return nil, err
	}
	for i, r := range m.mem.Regions() {
		if err := m.vm.SetMemory(uint32(i), r.GPA, r.Size(), r.HostAddr()); err != nil {
			return nil, err
		}
	}
	if err := m.vm.SetupX86(tssAddr); err != nil {
		return nil, err
	}

	cmdline := BaseCmdline
	if c := strings.TrimSpace(cfg.Cmdline); c != "" {
		cmdline += " " + c
	}
	m.entry, err = boot.Load(boot.Params{
		Kernel: kernel, KernelPath: cfg.Kernel, Initrd: initrd, Cmdline: cmdline,
		CPUs: cfg.CPUs, Mem: m.mem, ACPI: true, AML: com1AML,
	})
	if err != nil {
		return nil, err
	}

	if err := m.attachDevices(); err != nil {
		return nil, err
	}
	cpuid, err := m.sys.SupportedCPUID()
	if err != nil {
		return nil, err
	}
	m.tids = make([]atomic.Int32, cfg.CPUs)
	for i := 0; i < cfg.CPUs; i++ {
		c, err := m.vm.CreateVCPU(i)
		if err != nil {
			return nil, err
		}
		m.vcpus = append(m.vcpus, c)
		if err := setupVCPU(c, cpuid, cfg.CPUs, m.entry); err != nil {
			return nil, fmt.Errorf("vcpu %d: %w", i, err)
		}
	}
	// The kernel and initrd copies (tens of MiB) are in guest RAM now; hand
	// their heap back to the OS so the VMM's own footprint stays small.
	initrdLen := len(initrd)
	kernel, initrd = nil, nil
	debug.FreeOSMemory()
	m.log.Debug("machine created", "cpus", cfg.CPUs, "memory_mib", cfg.Memory>>20,
		"protocol", m.entry.Protocol, "cmdline", cmdline, "initrd_bytes", initrdLen)
	return m, nil
}

func (m *Machine) attachDevices() error {
	m.pio, m.mmio = bus.New("pio"), bus.New("mmio")
	m.pio.OnUnclaimed(func(a uint64, n int, w bool) { m.logUnclaimed("port", a, n, w) })
	m.mmio.OnUnclaimed(func(a uint64, n int, w bool) { m.logUnclaimed("mmio", a, n, w) })

	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	m.serialIRQ = efd
	if err := m.vm.IRQFD(efd, com1IRQ); err != nil {
		return err
	}
	out := m.cfg.Console
	if out == nil {
		out = io.Discard
	}
	m.console = newConsoleWatch(out, m.onPanicLine)
	m.uart = serial.New(m.console, m.pulseSerial, m.log.With("dev", "serial"))

	kbd := i8042.New(func() { m.end(Result{Outcome: OutcomeReset}) }, m.log.With("dev", "i8042"))
	ctl := control.New(controlHandler{m}, m.log.With("dev", "control"))
	pm := acpipm.New(func() { m.end(Result{Outcome: OutcomePowerOff}) }, m.log.With("dev", "acpi"))
	for _, d := range []struct {
		name       string
		base, size uint64
		dev        bus.Device
	}{
		{"com1", com1Base, 8, m.uart},
		{"i8042-data", 0x60, 1, kbd.Data()},
		{"i8042-cmd", 0x64, 1, kbd.Command()},
		{"ember-control", proto.PortBase, proto.PortCount, ctl},
		{"acpi-sleep", 0x0ff8, 2, pm},
		{"rtc", 0x70, 2, rtc.New()},
		// Port 0x80 is the POST/io_delay port: writes are expected, never news.
		{"post", 0x80, 1, sink{}},
	} {
		if err := m.pio.Register(d.name, d.base, d.size, d.dev); err != nil {
			return err
		}
	}
	return nil
}

// sink swallows writes and reads as all-ones.
type sink struct{}

func (sink) Read(_ uint64, d []byte) {
	for i := range d {
		d[i] = 0xff
	}
}
func (sink) Write(uint64, []byte) {}

var eventfdOne = [8]byte{1}

func (m *Machine) pulseSerial() {
	// irqfd turns the eventfd write into an edge on the IOAPIC pin.
	if _, err := unix.Write(m.serialIRQ, eventfdOne[:]); err != nil && !errors.Is(err, unix.EAGAIN) {
		m.log.Warn("serial interrupt", "err", err)
	}
}

func (m *Machine) logUnclaimed(kind string, addr uint64, n int, write bool) {
	if ok, dropped := m.unclaim.Allow(); ok {
		op := "read"
		if write {
			op = "write"
		}
		m.log.Debug("unclaimed guest access", "kind", kind, "addr", fmt.Sprintf("%#x", addr),
			"size", n, "op", op, "suppressed", dropped)
	}
}

type controlHandler struct{ m *Machine }

func (h controlHandler) Exit(status uint8) {
	h.m.end(Result{Outcome: OutcomeExited, Status: int(status)})
}

func (h controlHandler) Mark(code uint8) {
	t := time.Since(h.m.start)
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	switch code {
	case proto.MarkInit:
		if h.m.result.BootTime == 0 {
			h.m.result.BootTime = t
		}
	case proto.MarkCommand:
		if h.m.result.CommandStart == 0 {
			h.m.result.CommandStart = t
		}
	}
	h.m.log.Debug("guest mark", "code", code, "since_start", t)
}

func (h controlHandler) InitFailed() {
	h.m.end(Result{Outcome: OutcomeInitFailed, Status: proto.StatusInitFailed})
}

func (m *Machine) onPanicLine(line string) {
	m.mu.Lock()
	if m.result.Panic == "" {
		m.result.Panic = line
	}
	m.mu.Unlock()
}

// end records the first terminal event and stops the vCPUs.
func (m *Machine) end(r Result) {
	m.mu.Lock()
	if m.ended {
		m.mu.Unlock()
		return
	}
	m.ended = true
	m.result.Outcome, m.result.Status = r.Outcome, r.Status
	if r.Err != nil {
		m.result.Err = r.Err
	}
	m.mu.Unlock()
	close(m.endCh)
	m.kickAll()
}

// kickAll makes every vCPU leave KVM_RUN: immediate_exit first, then a
// signal to its thread, so a vCPU between checks cannot miss it.
func (m *Machine) kickAll() {
	pid := unix.Getpid()
	for i, c := range m.vcpus {
		c.SetImmediateExit(true)
		if tid := m.tids[i].Load(); tid > 0 {
			_ = unix.Tgkill(pid, int(tid), unix.SIGURG)
		}
	}
}

// Close releases every resource. It is idempotent.
func (m *Machine) Close() error {
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	if m.uart != nil {
		m.uart.Flush()
	}
	for _, c := range m.vcpus {
		c.Close()
	}
	if m.serialIRQ >= 0 {
		unix.Close(m.serialIRQ)
	}
	if m.vm != nil {
		m.vm.Close()
	}
	if m.mem != nil {
		m.mem.Close()
	}
	if m.sys != nil {
		m.sys.Close()
	}
	return nil
}
