// Package plan runs a resolved VM (a Plan) on KVM and reports how it
// ended. It is all that the VMM process needs once the front end (config,
// images, kernels, the nested path) has resolved a machine, so the
// process that holds the guest links nothing else: ember-vmm is built
// from it alone.
package plan

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/ember-vmm/ember/boot"
	"github.com/ember-vmm/ember/devices/virtio/blk"
	"github.com/ember-vmm/ember/devices/virtio/console"
	vfs "github.com/ember-vmm/ember/devices/virtio/fs"
	"github.com/ember-vmm/ember/devices/virtio/ninep"
	"github.com/ember-vmm/ember/devices/virtio/vsock"
	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/vmm"
	"github.com/ember-vmm/ember/vmm/nested"
	"golang.org/x/sys/unix"
)

// Exit statuses of ember itself, chosen like timeout(1) and docker run so
// scripts can tell them from a guest command's own status.
const (
	ExitStuck   = 122 // the nested L1 guest stopped responding and was killed
	ExitPanic   = 123 // guest kernel panicked or crashed without a status
	ExitTimeout = 124 // --timeout expired
	ExitError   = 125 // ember failed: bad input, host error
	ExitSignal  = 130 // ember was interrupted (SIGINT, SIGTERM, SIGHUP)
)

// OutcomeStuck is the outcome of a nested run whose L1 stopped responding.
const OutcomeStuck vmm.Outcome = "l1-stuck"

// Options are the host side of a run: where the console and the
// command's I/O go.
type Options struct {
	KVMPath string
	// Stdin is the console input of an interactive VM; ember reads
	// Ctrl-A x from it. Run closes it when the VM ends and its Read must
	// return then (as hostio.Input's does).
	Stdin io.ReadCloser
	// Terminal, when set, is the terminal the user sees the console on:
	// the guest's shell gets its size at start and on every resize.
	Terminal *os.File
	// CommandStdin is the guest command's stdin when the VM is not
	// interactive; nil gives the command end of file at once.
	CommandStdin io.Reader
	// Stdout receives the command's stdout (the serial console of an
	// interactive VM); Stderr its stderr and ember's own notices.
	Stdout, Stderr io.Writer
	Log            *slog.Logger
	// Started is when the ember process started, where the phase
	// timeline begins (zero: at the VM's creation).
	Started time.Time
	// pre are the marks of a hand-off to ember-vmm.
	pre []vmm.Mark
}

// Report is what a run produced; it is also the --json output.
type Report struct {
	Accel string `json:"accel"`
	// VMM is the executable that held the VM: ember-vmm, or ember itself
	// where no ember-vmm is installed beside it.
	VMM         string            `json:"vmm,omitempty"`
	Outcome     vmm.Outcome       `json:"outcome"`
	Reason      string            `json:"reason,omitempty"`
	ExitStatus  int               `json:"exit_status"`
	GuestStatus *int              `json:"guest_status,omitempty"`
	BootMS      float64           `json:"boot_ms"`
	CommandMS   float64           `json:"command_start_ms,omitempty"`
	WallMS      float64           `json:"wall_ms"`
	Panic       string            `json:"panic,omitempty"`
	Message     string            `json:"message,omitempty"`
	Kernel      string            `json:"kernel"`
	Initrd      string            `json:"initrd,omitempty"`
	CPUs        int               `json:"cpus"`
	MemoryMiB   uint64            `json:"memory_mib"`
	Exits       map[string]uint64 `json:"exits,omitempty"`
	// ExitsByDevice are the port-I/O and MMIO exits by the device that
	// served them.
	ExitsByDevice map[string]uint64 `json:"exits_by_device,omitempty"`
	// StoppedAt lists the vCPUs' instruction pointers when a guest that
	// was still running was stopped.
	StoppedAt []string `json:"stopped_at,omitempty"`
	// Devices are per-device counters (requests, bytes, errors, guest
	// faults, interrupts) of the virtio devices.
	Devices        map[string]map[string]uint64 `json:"devices,omitempty"`
	Unclaimed      uint64                       `json:"unclaimed_accesses,omitempty"`
	ConsoleDropped uint64                       `json:"console_dropped_bytes,omitempty"`
	L1BootMS       float64                      `json:"l1_boot_ms,omitempty"`
	// OverheadMiB, PrivateMiB and AnonMiB are the resident memory of the
	// process that held the VM beyond guest RAM (Firecracker's VMM
	// overhead), its private and its anonymous part, at the guest's end
	// (see Memory).
	OverheadMiB float64 `json:"vmm_overhead_mib,omitempty"`
	PrivateMiB  float64 `json:"vmm_private_mib,omitempty"`
	AnonMiB     float64 `json:"vmm_anon_mib,omitempty"`
	// Phases are the run's timeline, from the process start to the VM
	// torn down, with the VM exits taken in each.
	Phases []Phase `json:"phases,omitempty"`
}

// Plan is a fully resolved VM: files instead of "debian:" names, the
// command chosen. ember hands it to ember-vmm, and the nested path to the
// ember inside L1, as data, so every side runs the same machine.
type Plan struct {
	Kernel      string    `json:"kernel"`
	Initrd      string    `json:"initrd,omitempty"`
	Cmdline     string    `json:"cmdline,omitempty"`
	CPUs        int       `json:"cpus"`
	Memory      uint64    `json:"memory"`
	HugePages   *bool     `json:"huge_pages,omitempty"`
	Run         proto.Run `json:"run"`
	Interactive bool      `json:"interactive,omitempty"`
	// OwnInit says the initrd's init is the user's, not ember's: nothing
	// in the guest speaks ember's stdio protocol, so the VM gets no
	// virtio-console for it (its probe alone costs a hundred exits).
	OwnInit bool `json:"own_init,omitempty"`
	// Drives are the virtio-blk disks (absolute image paths).
	Drives []blk.Options `json:"drives,omitempty"`
	RNG    bool          `json:"rng,omitempty"`
	// Nets are the virtio-net interfaces, MACs resolved.
	Nets []vmm.Net `json:"nets,omitempty"`
	// Vsock is the virtio-vsock device (absolute socket path), if any.
	Vsock *vsock.Options `json:"vsock,omitempty"`
	// Shares are the virtio-fs devices (absolute directories); Run.Shares
	// says where the guest mounts them.
	Shares []vfs.Options `json:"shares,omitempty"`
	// Shares9P are the virtio-9p devices.
	Shares9P []ninep.Options `json:"shares_9p,omitempty"`
	// Timeout, when set, bounds Run (a run on KVM, the targets of `ember
	// test`; a nested run is bounded by its caller as a whole).
	Timeout time.Duration `json:"timeout,omitempty"`
	// ConsoleLog is Options.ConsoleLog, absolute; appended to, not
	// truncated, with ConsoleAppend (the inner ember of a nested run
	// shares it with the outer one).
	ConsoleLog    string `json:"console_log,omitempty"`
	ConsoleAppend bool   `json:"console_append,omitempty"`
	// VsockRelay and L1Net are set in the plan of an inner ember: its
	// vsock device's host side is the relay to the host's socket, and
	// L1's NICs are set up (launch.OpenNetwork) before the VMM runs.
	VsockRelay *nested.VsockRelay `json:"vsock_relay,omitempty"`
	L1Net      *nested.L1Network  `json:"l1_net,omitempty"`
}

// round1 rounds to a tenth, as the reports give MiB.
func round1(x float64) float64 { return math.Round(x*10) / 10 }

// Millis is d in milliseconds, as the reports give times.
func Millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// OpenInput is the console input of an interactive plan read from stdin,
// with the terminal's resizes sent in band when term is set; nil when the
// plan is not interactive or there is no stdin. done closes it.
func OpenInput(p *Plan, stdin io.ReadCloser, term *os.File) (in *ConsoleInput, done func()) {
	if !p.Interactive || stdin == nil {
		return nil, func() {}
	}
	in = NewConsoleInput(stdin)
	if term == nil {
		return in, func() { in.Close() }
	}
	stop := WatchResize(term, in)
	return in, func() { stop(); in.Close() }
}

// Run runs a resolved plan on KVM and waits for the VM to end. The error
// is for failures before the VM runs; guest outcomes are in the Report,
// whose ExitStatus ember exits with.
func Run(ctx context.Context, p *Plan, o Options) (*Report, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	p.SizeFrom(o.Terminal)
	k, extra, err := p.Check()
	if err != nil {
		return nil, err
	}
	defer k.Close()
	if p.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.Timeout)
		defer cancel()
	}
	if p.L1Net != nil {
		return nil, errors.New("plan: L1's network is not set up (the front end sets it up before the VMM runs)")
	}
	if r := p.VsockRelay; r != nil && p.Vsock != nil {
		ln, dial, err := r.Vsock()
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		p.Vsock.Listener, p.Vsock.Dial = ln, dial
	}
	in, done := OpenInput(p, o.Stdin, o.Terminal)
	defer done()
	return runKVM(ctx, o, p, k, extra, in)
}

// Check opens the kernel once and checks the whole machine without KVM:
// the kernel's headers, that kernel, initrd and command line fit in RAM.
func (p *Plan) Check() (*boot.Kernel, []byte, error) {
	extra, err := proto.Archive(p.Run)
	if err != nil {
		return nil, nil, err
	}
	k, err := boot.OpenKernel(p.Kernel)
	if err != nil {
		return nil, nil, err
	}
	if err := vmm.Check(p.vmmConfig(k, extra)); err != nil {
		k.Close()
		return nil, nil, err
	}
	return k, extra, nil
}

func (p *Plan) vmmConfig(k *boot.Kernel, extra []byte) vmm.Config {
	return vmm.Config{Kernel: k, Initrd: p.Initrd, Extra: extra, Cmdline: p.Cmdline, CPUs: p.CPUs, Memory: p.Memory, HugePages: p.HugePages,
		NoXSAVE: os.Getenv(proto.GuestXSAVEEnv) == "off",
		Drives:  p.Drives, RNG: p.RNG, Vsock: p.Vsock, Nets: p.Nets, Shares: p.Shares, Shares9P: p.Shares9P}
}

func runKVM(ctx context.Context, o Options, p *Plan, k *boot.Kernel, extra []byte, in *ConsoleInput) (*Report, error) {
	var input io.Reader
	var quit atomic.Bool
	if in != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		input = NewEscapeReader(in, func() { quit.Store(true); cancel() })
	}
	cfg := p.vmmConfig(k, extra)
	cfg.Console, cfg.Input, cfg.KVMPath, cfg.Log = o.Stdout, input, o.KVMPath, o.Log
	if p.Run.Stdio {
		if !p.OwnInit {
			cfg.Stdio = &console.Options{Stdin: o.CommandStdin, Stdout: o.Stdout, Stderr: o.Stderr}
		}
		cl, closeLog, err := ConsoleLog(p.ConsoleLog, p.ConsoleAppend, o.Stderr)
		if err != nil {
			return nil, err
		}
		defer closeLog()
		cfg.Console, cfg.ConsoleFallback = cl, o.Stdout
	}
	m, err := vmm.New(cfg)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	exe := trimStartup()
	stopTrim := afterBoot(m.Booted(), func() { trim(exe) })
	res, err := m.Run(ctx)
	stopTrim()
	if res == nil {
		return nil, err
	}
	rep := &Report{
		Accel: "kvm", VMM: self(), Outcome: res.Outcome, Reason: res.Reason, BootMS: Millis(res.BootTime), CommandMS: Millis(res.CommandStart),
		WallMS: Millis(res.Wall), Panic: res.Panic, Kernel: p.Kernel, Initrd: p.Initrd,
		CPUs: p.CPUs, MemoryMiB: p.Memory >> 20, Exits: res.Exits, ExitsByDevice: res.ExitsByDevice,
		Unclaimed: res.Unclaimed, ConsoleDropped: res.ConsoleDropped, Devices: res.Devices,
	}
	for _, ip := range res.StoppedAt {
		rep.StoppedAt = append(rep.StoppedAt, fmt.Sprintf("%#x", ip))
	}
	// Sampled after the guest's end and before teardown, so it holds
	// all the run made resident.
	if g, err := m.GuestResidentKiB(); err == nil {
		if mem, err := readSelfMemory(g); err == nil {
			rep.OverheadMiB, rep.PrivateMiB, rep.AnonMiB = round1(mem.Overhead), round1(mem.Private), round1(mem.Anon)
		}
	}
	// Tearing down is the last phase.
	_ = m.Close()
	var exits uint64
	for _, n := range res.Exits {
		exits += n
	}
	rep.Phases = phases(o.Started, o.pre, res.Marks, time.Now(), exits)
	Finish(rep, res, len(p.Run.Args) > 0)
	if res.Outcome == vmm.OutcomeCanceled && quit.Load() {
		// Ctrl-A x: the user ended the session, as with QEMU.
		rep.ExitStatus, rep.Message = 0, ""
	}
	return rep, nil
}

// Finish sets the exit status and a message for the outcome; command
// says a command was to run (not an interactive shell).
func Finish(rep *Report, res *vmm.Result, command bool) {
	switch res.Outcome {
	case vmm.OutcomeExited:
		s := res.Status
		rep.GuestStatus = &s
		rep.ExitStatus = s
	case vmm.OutcomeInitFailed:
		rep.ExitStatus = proto.StatusInitFailed
		rep.Message = "the guest init could not run the command"
	case vmm.OutcomePowerOff, vmm.OutcomeReset:
		// ember's poweroff and reboot report status 0 first: a command
		// whose guest ended without a status did not finish, and a script
		// must not read that as success.
		if command {
			rep.ExitStatus = ExitPanic
			rep.Message = fmt.Sprintf("the guest ended (%s: %s) before the command reported an exit status", res.Outcome, res.Reason)
		}
	case vmm.OutcomeCanceled:
		rep.ExitStatus = ExitSignal
		rep.Message = "canceled"
	case vmm.OutcomeCrash:
		rep.ExitStatus = ExitPanic
		rep.Message = "guest crashed: " + res.Reason
	case vmm.OutcomePanic:
		rep.ExitStatus = ExitPanic
		if res.Panic != "" {
			rep.Message = "guest kernel panic: " + res.Panic
		} else {
			rep.Message = res.Reason
		}
	case vmm.OutcomeTimeout:
		rep.ExitStatus = ExitTimeout
		rep.Message = "timeout: the guest was still running and was stopped"
	default:
		rep.ExitStatus = ExitError
		if res.Err != nil {
			rep.Message = res.Err.Error()
		}
	}
	if res.ConsoleDropped > 0 {
		note := fmt.Sprintf("%d bytes of guest console output were dropped: the reader of ember's output did not keep up", res.ConsoleDropped)
		if rep.Message != "" {
			rep.Message += "; " + note
		} else {
			rep.Message = note
		}
	}
}

// self is the running executable's name.
func self() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	return filepath.Base(exe)
}

// SizeFrom gives an interactive plan's shell the size of term, the
// user's terminal (nil: none), to start with; later sizes go in band.
func (p *Plan) SizeFrom(term *os.File) {
	if !p.Interactive || term == nil {
		return
	}
	if ws, err := unix.IoctlGetWinsize(int(term.Fd()), unix.TIOCGWINSZ); err == nil && ws.Row > 0 && ws.Col > 0 {
		p.Run.Winsize = &proto.Winsize{Rows: ws.Row, Cols: ws.Col}
	}
}
