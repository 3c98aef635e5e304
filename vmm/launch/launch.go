// Package launch turns a validated config into a running VM: it resolves
// kernels and images through the cache, checks that the machine can be
// built, picks the accelerator, runs the machine directly on KVM or inside a
// nested L1 guest, and reports.
package launch

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ember-vmm/ember/boot"
	"github.com/ember-vmm/ember/configs"
	"github.com/ember-vmm/ember/devices/virtio/blk"
	"github.com/ember-vmm/ember/devices/virtio/vsock"
	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/images"
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

// Options are the inputs of Run.
type Options struct {
	Config *configs.VM
	// Command overrides Config.Run.Command; empty with Interactive means a
	// shell on the console.
	Command     []string
	Interactive bool
	KVMPath     string

	// Stdin is the console input of an interactive VM; on the kvm path
	// ember reads Ctrl-A x from it, on the nested path the inner ember
	// does. Run closes it when the VM ends and its Read must return then
	// (as hostio.Input's does).
	Stdin io.ReadCloser
	// Terminal, when set, is the terminal the user sees the console on:
	// the guest's shell gets its size at start and on every resize.
	Terminal *os.File
	// Stdout receives the guest console; Stderr ember's own notices.
	Stdout, Stderr io.Writer
	Log            *slog.Logger
	Progress       io.Writer // human progress for long steps; nil = quiet
	CacheDir       string
	// InitBinary is the guest init; "" looks for ember-init beside the
	// running executable.
	InitBinary string
	// Self is the ember executable, run inside L1 for --accel nested.
	Self string
	// NestedStall bounds how long a nested L1 may go without a heartbeat
	// (0: nested.DefaultStall).
	NestedStall time.Duration
}

// Report is what a run produced; it is also the --json output.
type Report struct {
	Accel       string            `json:"accel"`
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
	// StoppedAt lists the vCPUs' instruction pointers when a guest that
	// was still running was stopped.
	StoppedAt []string `json:"stopped_at,omitempty"`
	// Devices are per-device counters (requests, bytes, errors, guest
	// faults, interrupts) of the virtio devices.
	Devices        map[string]map[string]uint64 `json:"devices,omitempty"`
	Unclaimed      uint64                       `json:"unclaimed_accesses,omitempty"`
	ConsoleDropped uint64                       `json:"console_dropped_bytes,omitempty"`
	L1BootMS       float64                      `json:"l1_boot_ms,omitempty"`
}

// Plan is a fully resolved VM: files instead of "debian:" names, the
// command chosen. The nested path hands it to the ember inside L1 as data
// (RunPlan), so both sides run the same machine.
type Plan struct {
	Kernel      string    `json:"kernel"`
	Initrd      string    `json:"initrd,omitempty"`
	Cmdline     string    `json:"cmdline,omitempty"`
	CPUs        int       `json:"cpus"`
	Memory      uint64    `json:"memory"`
	Run         proto.Run `json:"run"`
	Interactive bool      `json:"interactive,omitempty"`
	// Drives are the virtio-blk disks (absolute image paths).
	Drives []blk.Options `json:"drives,omitempty"`
	RNG    bool          `json:"rng,omitempty"`
	// Nets are the virtio-net interfaces, MACs resolved.
	Nets []vmm.Net `json:"nets,omitempty"`
	// Vsock is the virtio-vsock device (absolute socket path), if any.
	Vsock *vsock.Options `json:"vsock,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Run boots the VM described by o and waits for it to end. The error is
// for failures before the VM runs (bad files, no accelerator); everything
// Run refuses, it refuses before KVM is opened or an L1 guest boots. Guest
// outcomes are in the Report, whose ExitStatus ember should exit with.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	cfg := o.Config
	cache := &images.Cache{Dir: o.CacheDir, Log: o.Log, Progress: o.Progress}
	kernel, initrd, err := resolveBoot(ctx, cache, cfg, o)
	if err != nil {
		return nil, err
	}
	p := &Plan{Kernel: kernel, Initrd: initrd, Cmdline: cfg.Boot.Cmdline, CPUs: cfg.Machine.CPUs,
		Memory: uint64(cfg.Machine.Memory), Run: proto.Run{Env: cfg.Run.Env}, Interactive: o.Interactive}
	if p.Drives, err = drives(cfg); err != nil {
		return nil, err
	}
	p.RNG = cfg.RNG != nil
	if p.Nets, err = nets(cfg); err != nil {
		return nil, err
	}
	if v := cfg.Vsock; v != nil {
		uds, err := filepath.Abs(v.UDS)
		if err != nil {
			return nil, fmt.Errorf("vsock.uds: %w", err)
		}
		p.Vsock = &vsock.Options{CID: v.CID, UDS: uds}
	}
	switch {
	case len(o.Command) > 0:
		p.Run.Args = o.Command
	case !o.Interactive:
		p.Run.Args = cfg.Run.Command
	}
	if p.Interactive && o.Terminal != nil {
		if ws, err := unix.IoctlGetWinsize(int(o.Terminal.Fd()), unix.TIOCGWINSZ); err == nil && ws.Row > 0 && ws.Col > 0 {
			p.Run.Winsize = &proto.Winsize{Rows: ws.Row, Cols: ws.Col}
		}
	}
	k, extra, err := p.check()
	if err != nil {
		return nil, err
	}
	accel, err := pickAccel(cfg.Machine.Accel, o)
	if err != nil {
		k.Close()
		return nil, err
	}
	if t := time.Duration(cfg.Run.Timeout); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	in := o.input(p)
	if in != nil {
		defer in.Close()
		if o.Terminal != nil {
			stop := watchResize(o.Terminal, in)
			defer stop()
		}
	}
	if accel == AccelNested && p.Vsock != nil {
		k.Close()
		// The inner ember's socket would live inside L1, out of the host's
		// reach.
		return nil, errors.New("vsock: not available with --accel nested yet (the host socket cannot reach the VM inside the L1 guest); use --accel kvm")
	}
	if accel == AccelNested && len(p.Nets) > 0 {
		k.Close()
		return nil, errors.New("net: not available with --accel nested yet (the tap would be inside the L1 guest, not on this host); use --accel kvm")
	}
	if accel == AccelNested {
		k.Close()
		return runNested(ctx, cache, o, p, in)
	}
	defer k.Close()
	return runKVM(ctx, o, p, k, extra, in)
}

// drives turns the config's [[drive]] tables into device options with
// absolute paths (the nested path shares them by path).
func drives(cfg *configs.VM) ([]blk.Options, error) {
	var out []blk.Options
	for i, d := range cfg.Drives {
		abs, err := filepath.Abs(d.Path)
		if err != nil {
			return nil, fmt.Errorf("drive[%d].path: %w", i, err)
		}
		id := d.ID
		if id == "" {
			id = fmt.Sprintf("ember%d", i)
		}
		out = append(out, blk.Options{Path: abs, ReadOnly: d.ReadOnly, Serial: id})
	}
	return out, nil
}

// lockDrives opens and locks the plan's images on this host, as the VM
// will, so a busy image is refused before an L1 guest boots; the locks
// are held until release is called.
func lockDrives(p *Plan, log *slog.Logger) (release func(), mounts []proto.NestedMount, err error) {
	var held []*blk.Device
	release = func() {
		for _, d := range held {
			_ = d.Close()
		}
	}
	dirs := map[string]bool{}
	for i, o := range p.Drives {
		d, err := blk.Open(o, log)
		if err != nil {
			release()
			return nil, nil, fmt.Errorf("drive %d: %w", i, err)
		}
		held = append(held, d)
		// L1 sees the host's root read-only; a writable image's directory
		// is shared read-write at the same path.
		if dir := filepath.Dir(o.Path); !o.ReadOnly && !dirs[dir] {
			dirs[dir] = true
			mounts = append(mounts, proto.NestedMount{Path: dir})
		}
	}
	return release, mounts, nil
}

// nets resolves the config's [[net]] tables; an interface without a MAC
// gets a random locally administered one.
func nets(cfg *configs.VM) ([]vmm.Net, error) {
	var out []vmm.Net
	for i, n := range cfg.Nets {
		v := vmm.Net{Tap: n.Tap, Bridge: n.Bridge}
		if n.MAC != "" {
			m, err := configs.ParseMAC(n.MAC)
			if err != nil {
				return nil, fmt.Errorf("net[%d].mac: %w", i, err)
			}
			v.MAC = m
		} else {
			_, _ = rand.Read(v.MAC[1:])
			v.MAC[0] = 0x06 // locally administered, unicast
		}
		out = append(out, v)
	}
	return out, nil
}

// input is the console input of an interactive plan, or nil.
func (o Options) input(p *Plan) *consoleInput {
	if !p.Interactive || o.Stdin == nil {
		return nil
	}
	return newConsoleInput(o.Stdin)
}

// RunPlan runs a resolved plan on KVM: the ember inside a nested L1 guest.
func RunPlan(ctx context.Context, p *Plan, o Options) (*Report, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	k, extra, err := p.check()
	if err != nil {
		return nil, err
	}
	defer k.Close()
	in := o.input(p)
	if in != nil {
		defer in.Close()
	}
	return runKVM(ctx, o, p, k, extra, in)
}

// check opens the kernel once and checks the whole machine without KVM:
// the kernel's headers, that kernel, initrd and command line fit in RAM.
func (p *Plan) check() (*boot.Kernel, []byte, error) {
	extra, err := images.RunArchive(p.Run)
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
	return vmm.Config{Kernel: k, Initrd: p.Initrd, Extra: extra, Cmdline: p.Cmdline, CPUs: p.CPUs, Memory: p.Memory,
		Drives: p.Drives, RNG: p.RNG, Vsock: p.Vsock, Nets: p.Nets}
}

func pickAccel(want string, o Options) (string, error) {
	path := o.KVMPath
	if path == "" {
		path = "/dev/kvm"
	}
	switch want {
	case AccelKVM:
		if err := ProbeKVM(path); err != nil {
			return "", fmt.Errorf("--accel kvm: %w (try --accel nested)", err)
		}
		return AccelKVM, nil
	case AccelNested:
		if err := nested.Check(); err != nil {
			return "", fmt.Errorf("--accel nested: %w", err)
		}
		return AccelNested, nil
	}
	kerr := ProbeKVM(path)
	if kerr == nil {
		return AccelKVM, nil
	}
	if err := nested.Check(); err != nil {
		return "", fmt.Errorf("%w: %v; and for nested: %v", ErrNoAccel, kerr, err)
	}
	fmt.Fprintf(o.Stderr, "ember: %v; using --accel nested (KVM inside a software-emulated machine: much slower)\n", kerr)
	return AccelNested, nil
}

// resolveBoot turns the config's kernel and initrd specs into files.
func resolveBoot(ctx context.Context, cache *images.Cache, cfg *configs.VM, o Options) (kernel, initrd string, err error) {
	var k *images.Kernel
	if strings.HasPrefix(cfg.Boot.Kernel, "debian:") {
		if k, err = images.ResolveKernel(ctx, cache, cfg.Boot.Kernel); err != nil {
			return "", "", err
		}
		kernel = k.Path
	} else if kernel, err = filepath.Abs(cfg.Boot.Kernel); err != nil {
		return "", "", err
	}
	switch cfg.Boot.Initrd {
	case "none", "":
	case "default":
		// For a kernel of the user's own, the image carries no modules.
		ib, err := InitBinary(o.InitBinary)
		if err != nil {
			return "", "", err
		}
		if initrd, err = cache.Initramfs(ctx, k, ib); err != nil {
			return "", "", err
		}
	default:
		if initrd, err = filepath.Abs(cfg.Boot.Initrd); err != nil {
			return "", "", err
		}
	}
	return kernel, initrd, nil
}

// InitBinary returns the guest init to put into images: path if given,
// else ember-init beside the running executable.
func InitBinary(path string) (string, error) {
	if path != "" {
		return path, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	p := filepath.Join(filepath.Dir(exe), "ember-init")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("guest init %s not found (build it with `make build`): %w", p, err)
	}
	return p, nil
}

func runKVM(ctx context.Context, o Options, p *Plan, k *boot.Kernel, extra []byte, in *consoleInput) (*Report, error) {
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
	m, err := vmm.New(cfg)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	res, err := m.Run(ctx)
	if res == nil {
		return nil, err
	}
	rep := &Report{
		Accel: AccelKVM, Outcome: res.Outcome, Reason: res.Reason, BootMS: ms(res.BootTime), CommandMS: ms(res.CommandStart),
		WallMS: ms(res.Wall), Panic: res.Panic, Kernel: p.Kernel, Initrd: p.Initrd,
		CPUs: p.CPUs, MemoryMiB: p.Memory >> 20, Exits: res.Exits,
		Unclaimed: res.Unclaimed, ConsoleDropped: res.ConsoleDropped, Devices: res.Devices,
	}
	for _, ip := range res.StoppedAt {
		rep.StoppedAt = append(rep.StoppedAt, fmt.Sprintf("%#x", ip))
	}
	finish(rep, res)
	if res.Outcome == vmm.OutcomeCanceled && quit.Load() {
		// Ctrl-A x: the user ended the session, as with QEMU.
		rep.ExitStatus, rep.Message = 0, ""
	}
	return rep, nil
}

// finish sets the exit status and a message for the outcome.
func finish(rep *Report, res *vmm.Result) {
	switch res.Outcome {
	case vmm.OutcomeExited:
		s := res.Status
		rep.GuestStatus = &s
		rep.ExitStatus = s
	case vmm.OutcomeInitFailed:
		rep.ExitStatus = proto.StatusInitFailed
		rep.Message = "the guest init could not run the command"
	case vmm.OutcomePowerOff, vmm.OutcomeReset:
		rep.ExitStatus = 0
	case vmm.OutcomeCanceled:
		rep.ExitStatus = ExitSignal
		rep.Message = "canceled"
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

// planFile is the name of the plan in the nested IO share.
const planFile = "plan.json"

// runNested runs ember itself inside an L1 guest under QEMU/TCG, where
// kvm-amd gives a real /dev/kvm, hands it the plan, and reports what it
// reported.
func runNested(ctx context.Context, cache *images.Cache, o Options, p *Plan, in *consoleInput) (*Report, error) {
	l1k, err := images.ResolveKernel(ctx, cache, "debian:amd64")
	if err != nil {
		return nil, fmt.Errorf("nested L1 kernel: %w", err)
	}
	ib, err := InitBinary(o.InitBinary)
	if err != nil {
		return nil, err
	}
	l1i, err := cache.L1Initramfs(ctx, l1k, ib)
	if err != nil {
		return nil, fmt.Errorf("nested L1 initramfs: %w", err)
	}
	self := o.Self
	if self == "" {
		if self, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	plan, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	args := []string{self, "run-plan", filepath.Join(proto.IOMount, planFile),
		"--result-file", filepath.Join(proto.IOMount, proto.ResultFile),
		"--log-level", levelName(o.Log),
	}
	dir, _ := os.Getwd()
	start := time.Now()
	base := &Report{Accel: AccelNested, Kernel: p.Kernel, Initrd: p.Initrd, CPUs: p.CPUs, MemoryMiB: p.Memory >> 20}
	var stdin io.Reader
	if in != nil {
		stdin = in
	}
	release, mounts, err := lockDrives(p, o.Log)
	if err != nil {
		return nil, err
	}
	defer release()
	files := []string{p.Kernel, p.Initrd}
	for _, d := range p.Drives {
		files = append(files, d.Path)
	}
	res, err := nested.Run(ctx, nested.Options{
		Kernel: l1k.Path, Initrd: l1i, Args: args, Dir: dir, Mounts: mounts,
		CPUs: L1CPUs, MemoryMiB: L1MemoryMiB(p.Memory),
		Stdin: stdin, Stdout: o.Stdout, Stderr: o.Stderr, Log: o.Log,
		Files:   files,
		IOFiles: map[string][]byte{planFile: plan}, Stall: o.NestedStall,
	})
	base.WallMS = ms(time.Since(start))
	switch {
	case err == nil:
	case errors.Is(err, nested.ErrL1Stuck):
		base.Outcome, base.ExitStatus, base.Message = OutcomeStuck, ExitStuck, err.Error()
		return base, nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		base.Outcome = vmm.OutcomeTimeout
		finish(base, &vmm.Result{Outcome: base.Outcome})
		return base, nil
	case ctx.Err() != nil:
		base.Outcome = vmm.OutcomeCanceled
		finish(base, &vmm.Result{Outcome: base.Outcome})
		return base, nil
	default:
		return nil, err
	}
	rep := &Report{}
	if len(res.ResultJSON) > 0 {
		if err := json.Unmarshal(res.ResultJSON, rep); err != nil {
			return nil, fmt.Errorf("nested: inner result: %w", err)
		}
	} else {
		rep = base
		rep.Outcome, rep.ExitStatus = vmm.OutcomeError, res.ExitStatus
		rep.Message = "ember inside the L1 guest ended without a result"
	}
	rep.Accel = AccelNested
	rep.L1BootMS = ms(res.L1Boot)
	rep.WallMS = ms(time.Since(start))
	return rep, nil
}

// L1CPUs is the nested L1 guest's vCPU count.
const L1CPUs = 2

// L1MemoryMiB is what an L1 guest needs to run an inner VM of memory
// bytes: the inner guest's RAM, plus 768 MiB for L1's kernel, the page
// cache of the shared root and the inner ember.
func L1MemoryMiB(memory uint64) int {
	return max(int(memory>>20)+768, nested.MinMemoryMiB)
}

func levelName(l *slog.Logger) string {
	ctx := context.Background()
	switch {
	case l.Enabled(ctx, slog.LevelDebug):
		return "debug"
	case l.Enabled(ctx, slog.LevelInfo):
		return "info"
	case l.Enabled(ctx, slog.LevelWarn):
		return "warn"
	}
	return "error"
}
