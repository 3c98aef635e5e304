package vmm

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/ember-vmm/ember/devices/acpipm"
	"github.com/ember-vmm/ember/devices/control"
	"github.com/ember-vmm/ember/devices/i8042"
	"github.com/ember-vmm/ember/devices/irq"
	"github.com/ember-vmm/ember/devices/rtc"
	"github.com/ember-vmm/ember/devices/serial"
	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/vmm/bus"
	"github.com/ember-vmm/ember/vmm/platform"
	"github.com/ember-vmm/ember/vmm/ratelimit"
)

// devLog is a device's logger: rate-limited on its own, since the guest
// decides how often a device has something to say.
func (m *Machine) devLog(name string) *slog.Logger {
	return ratelimit.NewLogger(m.log.With("dev", name), guestLogBurst, guestLogInterval)
}

// attachDevices creates a device for every entry of the platform table and
// registers it on its bus; an entry without an implementation is an error.
func (m *Machine) attachDevices() error {
	m.pio, m.mmio = bus.New("pio"), bus.New("mmio")
	m.pio.OnUnclaimed(func(a uint64, n int, w bool) { m.logUnclaimed("port", a, n, w) })
	m.mmio.OnUnclaimed(func(a uint64, n int, w bool) { m.logUnclaimed("mmio", a, n, w) })

	m.console = newConsoleOut(m.cfg.Console, m.cfg.consoleBuffer, m.log.With("dev", platform.COM1))
	m.console.watch.onPanic = m.onPanicLine
	m.console.watch.onHalt = m.hintHalted

	com1, _ := m.plat.Lookup(platform.COM1)
	line, err := m.edgeLine(com1.GSI)
	if err != nil {
		return err
	}
	uart := serial.New(m.console, line, m.devLog(platform.COM1))
	m.uart = uart

	kbd := i8042.New(func() { m.end(Result{Outcome: OutcomeReset, Reason: "i8042 reset"}) }, m.devLog("i8042"))
	impl := map[string]bus.Device{
		platform.COM1:      uart,
		platform.I8042Data: kbd.Data(),
		platform.I8042Cmd:  kbd.Command(),
		platform.Control:   control.New(controlHandler{m}, m.devLog(platform.Control)),
		platform.ACPISleep: acpipm.New(platform.SleepTypeS5,
			func() { m.end(Result{Outcome: OutcomePowerOff, Reason: "ACPI S5"}) }, m.devLog(platform.ACPISleep)),
		platform.RTC:  rtc.New(),
		platform.POST: sink{},
	}
	if err := m.attachVirtio(impl); err != nil {
		return err
	}
	for _, d := range m.plat.Devices() {
		dev, ok := impl[d.Name]
		if !ok {
			return fmt.Errorf("platform device %s has no implementation", d.Name)
		}
		b := m.pio
		if d.Space == platform.MMIO {
			b = m.mmio
		}
		if err := b.Register(d.Name, d.Base, d.Size, dev); err != nil {
			return err
		}
	}
	for i, d := range m.cfg.testPIO {
		if err := m.pio.Register(fmt.Sprintf("test%d", i), d.base, d.size, d.dev); err != nil {
			return err
		}
	}
	return nil
}

// edgeLine wires an edge-triggered interrupt to gsi.
func (m *Machine) edgeLine(gsi int) (irq.Line, error) {
	if gsi == platform.NoGSI {
		return irq.None{}, nil
	}
	l, err := newIRQLine(m.vm, uint32(gsi), nil, m.glog)
	if err != nil {
		return nil, err
	}
	m.lines = append(m.lines, l)
	return l, nil
}

// sink swallows writes and reads as all-ones.
type sink struct{}

func (sink) Read(_ uint64, d []byte) {
	for i := range d {
		d[i] = 0xff
	}
}
func (sink) Write(uint64, []byte) {}

func (m *Machine) logUnclaimed(kind string, addr uint64, n int, write bool) {
	op := "read"
	if write {
		op = "write"
	}
	m.glog.Debug("unclaimed guest access", "kind", kind, "addr", fmt.Sprintf("%#x", addr), "size", n, "op", op)
}

type controlHandler struct{ m *Machine }

func (h controlHandler) Exit(status uint8) {
	h.m.mark(MarkCommandExit)
	h.m.end(Result{Outcome: OutcomeExited, Status: int(status)})
}

func (h controlHandler) Mark(code uint8) {
	t := time.Since(h.m.start)
	h.m.mu.Lock()
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
	h.m.mu.Unlock()
	switch code {
	case proto.MarkInit:
		h.m.mark(MarkInit)
	case proto.MarkCommand:
		h.m.mark(MarkCommand)
	}
	if code == proto.MarkStdioOnConsole && h.m.cfg.ConsoleFallback != nil {
		h.m.console.redirect(h.m.cfg.ConsoleFallback)
	}
	h.m.glog.Debug("guest mark", "code", code, "since_start", t)
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
