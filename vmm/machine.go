// Package vmm assembles and runs a virtual machine: KVM, guest memory, the
// devices of the platform table on their buses, the loaded kernel, and one
// OS thread per vCPU.
package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ember-vmm/ember/boot"
	"github.com/ember-vmm/ember/devices/serial"
	"github.com/ember-vmm/ember/devices/virtio/blk"
	"github.com/ember-vmm/ember/devices/virtio/console"
	vfs "github.com/ember-vmm/ember/devices/virtio/fs"
	"github.com/ember-vmm/ember/devices/virtio/ninep"
	"github.com/ember-vmm/ember/devices/virtio/vsock"
	"github.com/ember-vmm/ember/vmm/bus"
	"github.com/ember-vmm/ember/vmm/kvm"
	"github.com/ember-vmm/ember/vmm/memory"
	"github.com/ember-vmm/ember/vmm/platform"
	"github.com/ember-vmm/ember/vmm/ratelimit"
)

// Config is a fully resolved machine description.
type Config struct {
	// Kernel is the opened kernel (boot.OpenKernel); the caller closes it.
	Kernel *boot.Kernel
	// Initrd is the initramfs path, "" for none.
	Initrd string
	// Extra is appended to the initrd (the run archive), 4-byte aligned as
	// the initramfs format requires.
	Extra []byte
	// Cmdline is appended to the platform's own command line.
	Cmdline string
	CPUs    int
	Memory  uint64 // bytes
	// HugePages backs guest RAM with transparent huge pages (true), with
	// 4 KiB pages (false), or as the host's THP policy says (nil).
	HugePages *bool
	// NoXSAVE hides XSAVE and what depends on it (AVX and up, PKU) from
	// the guest (see hideXSAVE).
	NoXSAVE bool
	KVMPath string // default /dev/kvm

	// Console receives the guest's serial output; nil discards it. A
	// pollable *os.File lets Run bound the time it waits for a stalled
	// reader at the end.
	Console io.Writer
	// Input is host input for the serial console; nil for none. If it is
	// an io.Closer, Run closes it when the VM ends, and its Read must
	// return then.
	Input io.Reader
	// Drives are virtio-blk disks in the guest's order (vda, vdb, ...).
	Drives []blk.Options
	// RNG adds a virtio entropy device.
	RNG bool
	// Nets are virtio-net interfaces over host taps.
	Nets []Net
	// Stdio adds a virtio-console carrying the guest command's standard
	// streams.
	Stdio *console.Options
	// ConsoleFallback, with Stdio, receives the serial console from the
	// moment the guest says its command runs there after all (a kernel
	// without virtio-console; proto.MarkStdioOnConsole).
	ConsoleFallback io.Writer
	// Shares are virtio-fs devices, one per host directory.
	Shares []vfs.Options
	// Shares9P are virtio-9p devices, for kernels without virtiofs.
	Shares9P []ninep.Options
	// Vsock adds a virtio-vsock device with its host side on a unix
	// socket; nil for none.
	Vsock *vsock.Options

	// ConsoleDrain bounds the wait, when the VM ends, for output still on
	// its way to Console (default 2s).
	ConsoleDrain time.Duration
	Log          *slog.Logger

	// testPIO adds devices to the port-I/O bus, consoleBuffer bounds the
	// console buffer (in-package tests only).
	testPIO       []testDevice
	consoleBuffer int
}

type testDevice struct {
	base, size uint64
	dev        bus.Device
}

// Net is one virtio-net interface: its host tap (created if no interface
// has the name), an optional bridge for it, and the guest's MAC.
type Net struct {
	Tap    string  `json:"tap,omitempty"`
	Bridge string  `json:"bridge,omitempty"`
	MAC    [6]byte `json:"mac"`
	// FD is the tap's open descriptor, inherited from the front end
	// that opened it (netsetup.OpenTap); the machine owns it from New.
	FD int `json:"fd,omitempty"`
}

// Log limits for whatever a guest can make ember log: per device, burst
// lines per interval.
const (
	guestLogBurst    = 10
	guestLogInterval = 10 * time.Second
	defaultDrain     = 2 * time.Second
)

// Machine states.
const (
	stateNew = iota
	stateRunning
	stateDone
	stateClosed
)

// Machine is one VM. New prepares it, Run executes it once, Close frees it.
type Machine struct {
	cfg   Config
	log   *slog.Logger
	glog  *slog.Logger // rate-limited: for events the guest causes
	start time.Time

	plat  *platform.Platform
	sys   *kvm.System
	vm    *kvm.VM
	mem   *memory.Memory
	vcpus []*kvm.VCPU
	entry *boot.Entry

	pio, mmio *bus.Bus
	lines     []*irqLine
	console   *consoleOut
	uart      *serial.UART
	virtio    []*virtioDev

	mu         sync.Mutex
	state      int
	ended      bool
	result     Result
	endCh      chan struct{}
	runDone    chan struct{}
	booted     chan struct{} // closed at MarkCommand
	onEnd      []func()
	tids       []atomic.Int32
	exitCounts []exitCounts
	// exitTotal counts every vCPU's exits, for marks taken while the
	// vCPUs run.
	exitTotal atomic.Uint64
	probe     []atomic.Bool
	probeCh   chan vcpuState
	haltCh    chan struct{}
	closeMu   sync.Mutex
}

// layout returns the platform table, RAM and initrd size cfg describes,
// checking everything New would reject, without KVM.
func layout(cfg Config) (*platform.Platform, boot.Params, error) {
	var p boot.Params
	if cfg.Kernel == nil {
		return nil, p, errors.New("no kernel")
	}
	if cfg.CPUs < 1 || cfg.CPUs > boot.MaxCPUs {
		return nil, p, fmt.Errorf("cpus %d out of range 1..%d", cfg.CPUs, boot.MaxCPUs)
	}
	if cfg.Memory == 0 || cfg.Memory%memory.PageSize != 0 {
		return nil, p, fmt.Errorf("memory %d: must be a positive multiple of %d", cfg.Memory, memory.PageSize)
	}
	plat := platform.New()
	if err := addVirtio(plat, cfg); err != nil {
		return nil, p, err
	}
	p = boot.Params{
		Kernel: cfg.Kernel, Cmdline: fullCmdline(plat, cfg.Cmdline), CPUs: cfg.CPUs,
		RAM: platform.RAM(cfg.Memory), Platform: plat.Boot(),
	}
	if cfg.Initrd != "" {
		st, err := os.Stat(cfg.Initrd)
		if err != nil {
			return nil, p, fmt.Errorf("initrd: %w", err)
		}
		if !st.Mode().IsRegular() {
			return nil, p, fmt.Errorf("initrd %s: not a regular file", cfg.Initrd)
		}
		p.InitrdSize = st.Size()
	}
	if len(cfg.Extra) > 0 {
		p.InitrdSize = align4(p.InitrdSize) + int64(len(cfg.Extra))
	}
	if p.InitrdSize > 0 {
		// Check needs a reader only to know there is one.
		p.Initrd = strings.NewReader("")
	}
	return plat, p, nil
}

func align4(n int64) int64 { return (n + 3) &^ 3 }

// fullCmdline is the platform's command line and the user's. A kernel
// told acpi=off does not read the DSDT, so it also gets the virtio
// devices on the command line (two declarations of one device would make
// the second probe fail, so never both).
func fullCmdline(plat *platform.Platform, user string) string {
	c := plat.Cmdline()
	if u := strings.TrimSpace(user); u != "" {
		c += " " + u
	}
	if slices.Contains(strings.Fields(user), "acpi=off") {
		if v := plat.VirtioCmdline(); v != "" {
			c += " " + v
		}
	}
	return c
}

// Check reports whether New would accept cfg, without KVM or guest
// memory: CPUs, memory, whether the kernel, initrd and command line fit.
func Check(cfg Config) error {
	_, p, err := layout(cfg)
	if err != nil {
		return err
	}
	return boot.Check(p)
}

// New creates the VM, loads the kernel and initrd, and attaches the
// devices. It starts nothing; on any error everything already created is
// released.
func New(cfg Config) (_ *Machine, err error) {
	plat, bp, err := layout(cfg)
	if err != nil {
		return nil, err
	}
	if err := boot.Check(bp); err != nil {
		return nil, err
	}
	m := &Machine{cfg: cfg, log: cfg.Log, start: time.Now(), plat: plat,
		endCh: make(chan struct{}), runDone: make(chan struct{}), booted: make(chan struct{}),
		probeCh: make(chan vcpuState, cfg.CPUs), haltCh: make(chan struct{}, 1)}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.glog = ratelimit.NewLogger(m.log, guestLogBurst, guestLogInterval)
	// Every error return below releases what was built so far (m stays
	// set: the result, not m, becomes nil).
	defer func() {
		if err != nil {
			m.Close()
		}
	}()

	// Drive images first: a missing or locked image is the user's
	// mistake, reported before KVM is touched.
	if err := m.openVirtio(); err != nil {
		return nil, err
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
	if m.mem, err = memory.New(ramLayout(bp.RAM), cfg.HugePages); err != nil {
		return nil, err
	}
	for i, r := range m.mem.Regions() {
		if err := m.vm.SetMemory(uint32(i), r.GPA, r.Size(), r.HostAddr()); err != nil {
			return nil, err
		}
	}
	if err := m.vm.SetupX86(platform.TSSAddr); err != nil {
		return nil, err
	}

	initrd, closeInitrd, err := openInitrd(cfg.Initrd, cfg.Extra, bp.InitrdSize)
	if err != nil {
		return nil, err
	}
	bp.Initrd, bp.Mem = initrd, m.mem
	m.entry, err = boot.Load(bp)
	closeInitrd()
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
	m.exitCounts = make([]exitCounts, cfg.CPUs)
	m.probe = make([]atomic.Bool, cfg.CPUs)
	for i := 0; i < cfg.CPUs; i++ {
		c, err := m.vm.CreateVCPU(i)
		if err != nil {
			return nil, err
		}
		m.vcpus = append(m.vcpus, c)
		if err := setupVCPU(c, cpuid, cfg.CPUs, m.entry, cfg.NoXSAVE); err != nil {
			return nil, fmt.Errorf("vcpu %d: %w", i, err)
		}
	}
	m.log.Debug("machine created", "cpus", cfg.CPUs, "memory_mib", cfg.Memory>>20,
		"protocol", m.entry.Protocol, "cmdline", bp.Cmdline, "initrd_bytes", bp.InitrdSize)
	m.mark(MarkCreated)
	return m, nil
}

// mark records a moment of the run (once per name).
func (m *Machine) mark(name string) {
	now, exits := time.Now(), m.exitTotal.Load()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, k := range m.result.Marks {
		if k.Name == name {
			return
		}
	}
	m.result.Marks = append(m.result.Marks, Mark{Name: name, At: now, Exits: exits})
	if name == MarkCommand {
		close(m.booted)
	}
}

// Booted is closed when the guest's command starts, as ember's init
// reports it: the guest's boot is over. A guest without ember's init
// never closes it.
func (m *Machine) Booted() <-chan struct{} { return m.booted }

// openInitrd returns the initrd file followed by extra (4-byte aligned)
// as one reader of size bytes.
func openInitrd(path string, extra []byte, size int64) (io.ReaderAt, func(), error) {
	var parts []io.ReaderAt
	var sizes []int64
	closeFn := func() {}
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return nil, nil, fmt.Errorf("initrd: %w", err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("initrd: %w", err)
		}
		parts, sizes = append(parts, f), append(sizes, st.Size())
		closeFn = func() { f.Close() }
	}
	if len(extra) > 0 {
		var have int64
		if len(sizes) > 0 {
			have = sizes[0]
		}
		if pad := align4(have) - have; pad > 0 {
			parts, sizes = append(parts, zeros{}), append(sizes, pad)
		}
		parts, sizes = append(parts, readerAtBytes(extra)), append(sizes, int64(len(extra)))
	}
	var total int64
	for _, s := range sizes {
		total += s
	}
	if total != size {
		closeFn()
		return nil, nil, fmt.Errorf("initrd %s changed size while ember was starting (%d bytes, expected %d)", path, total, size)
	}
	return concat{parts: parts, sizes: sizes}, closeFn, nil
}

type zeros struct{}

func (zeros) ReadAt(p []byte, _ int64) (int, error) {
	clear(p)
	return len(p), nil
}

type readerAtBytes []byte

func (b readerAtBytes) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// concat reads parts (of the given sizes) as one.
type concat struct {
	parts []io.ReaderAt
	sizes []int64
}

func (c concat) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for i, part := range c.parts {
		if len(p) == 0 {
			break
		}
		if off >= c.sizes[i] {
			off -= c.sizes[i]
			continue
		}
		k := int(min(int64(len(p)), c.sizes[i]-off))
		got, err := part.ReadAt(p[:k], off)
		n += got
		if got < k {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return n, err
		}
		p, off = p[k:], 0
	}
	if len(p) > 0 {
		return n, io.EOF
	}
	return n, nil
}

// end records the first terminal event, stops the vCPUs and unblocks
// every goroutine of the run.
func (m *Machine) end(r Result) {
	m.mark(MarkEnded)
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
	if r.Reason != "" {
		m.result.Reason = r.Reason
	}
	hooks := m.onEnd
	m.onEnd = nil
	m.mu.Unlock()
	close(m.endCh)
	m.kickAll()
	for _, f := range hooks {
		f()
	}
}

// atEnd registers f to run once when the VM ends (to unblock a goroutine).
func (m *Machine) atEnd(f func()) {
	m.mu.Lock()
	if !m.ended {
		m.onEnd = append(m.onEnd, f)
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()
	f()
}

func (m *Machine) stopped() bool {
	select {
	case <-m.endCh:
		return true
	default:
		return false
	}
}

// GuestResidentKiB is how much of the guest's RAM the host holds, in
// KiB, to tell the VMM's own memory from its guest's.
func (m *Machine) GuestResidentKiB() (uint64, error) {
	if m.mem == nil {
		return 0, nil
	}
	return m.mem.ResidentKiB()
}

// Close releases every resource. It stops and waits for a Run in progress
// first, so nothing touches a vCPU's run area or an eventfd after they are
// released, and returns the errors it met. It is idempotent.
func (m *Machine) Close() error {
	m.mu.Lock()
	running := m.state == stateRunning
	m.mu.Unlock()
	if running {
		m.end(Result{Outcome: OutcomeCanceled, Reason: "machine closed"})
		<-m.runDone
	}
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	m.mu.Lock()
	if m.state == stateClosed {
		m.mu.Unlock()
		return nil
	}
	m.state = stateClosed
	m.mu.Unlock()
	var errs []error
	for _, c := range m.vcpus {
		errs = append(errs, c.Close())
	}
	errs = append(errs, m.closeVirtio())
	for _, l := range m.lines {
		errs = append(errs, l.close(m.vm))
	}
	if m.vm != nil {
		errs = append(errs, m.vm.Close())
	}
	if m.mem != nil {
		errs = append(errs, m.mem.Close())
	}
	if m.sys != nil {
		errs = append(errs, m.sys.Close())
	}
	return errors.Join(errs...)
}

func ramLayout(rs []boot.Range) [][2]uint64 {
	out := make([][2]uint64, len(rs))
	for i, r := range rs {
		out[i] = [2]uint64{r.Start, r.Size}
	}
	return out
}
