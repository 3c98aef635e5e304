// Package launch turns a validated config into a running VM: it resolves
// kernels and images through the cache, picks the accelerator, runs the
// machine directly on KVM or inside a nested L1 guest, and reports.
package launch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ember-vmm/ember/boot"
	"github.com/ember-vmm/ember/configs"
	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/images"
	"github.com/ember-vmm/ember/vmm"
	"github.com/ember-vmm/ember/vmm/nested"
)

// Exit statuses of ember itself, chosen like timeout(1) and docker run so
// scripts can tell them from a guest command's own status.
const (
	ExitPanic   = 123 // guest kernel panicked or crashed without a status
	ExitTimeout = 124 // --timeout expired
	ExitError   = 125 // ember failed: bad input, host error
)

// Options are the inputs of Run.
type Options struct {
	Config *configs.VM
	// Command overrides Config.Run.Command; empty with Interactive means a
	// shell on the console.
	Command     []string
	Interactive bool
	KVMPath     string

	// Stdin is the console input; on the kvm path ember reads Ctrl-A x
	// from it, on the nested path the inner ember does.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Log            *slog.Logger
	Progress       io.Writer // human progress for long steps; nil = quiet
	CacheDir       string
	// InitBinary is the guest init; "" looks for ember-init beside the
	// running executable.
	InitBinary string
	// Self is the ember executable, run inside L1 for --accel nested.
	Self string
}

// Report is what a run produced; it is also the --json output.
type Report struct {
	Accel       string            `json:"accel"`
	Outcome     vmm.Outcome       `json:"outcome"`
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
	Unclaimed   uint64            `json:"unclaimed_accesses,omitempty"`
	L1BootMS    float64           `json:"l1_boot_ms,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Run boots the VM described by o and waits for it to end. The error is
// for failures before or around the run (bad files, no accelerator); guest
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
	if err := checkKernel(kernel); err != nil {
		return nil, err
	}
	accel, err := pickAccel(cfg.Machine.Accel, o)
	if err != nil {
		return nil, err
	}
	if t := time.Duration(cfg.Run.Timeout); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	run := proto.Run{Env: cfg.Run.Env}
	switch {
	case len(o.Command) > 0:
		run.Args = o.Command
	case !o.Interactive:
		run.Args = cfg.Run.Command
	}
	if accel == AccelNested {
		return runNested(ctx, cache, o, kernel, initrd, run)
	}
	return runKVM(ctx, o, kernel, initrd, run)
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

// checkKernel refuses a file that is not a usable kernel before any VM or
// L1 guest exists.
func checkKernel(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	if _, err := boot.Detect(b); err != nil {
		return fmt.Errorf("kernel %s: %w", path, err)
	}
	return nil
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

func runKVM(ctx context.Context, o Options, kernel, initrd string, run proto.Run) (*Report, error) {
	extra, err := images.RunArchive(run)
	if err != nil {
		return nil, err
	}
	cfg := o.Config
	var input io.Reader
	var quit atomic.Bool
	if o.Interactive {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		input = NewEscapeReader(o.Stdin, func() { quit.Store(true); cancel() })
	}
	m, err := vmm.New(vmm.Config{
		Kernel: kernel, Initrd: initrd, Extra: extra, Cmdline: cfg.Boot.Cmdline,
		CPUs: cfg.Machine.CPUs, Memory: uint64(cfg.Machine.Memory), KVMPath: o.KVMPath,
		Console: o.Stdout, Input: input, Log: o.Log,
	})
	if err != nil {
		return nil, err
	}
	defer m.Close()
	res, err := m.Run(ctx)
	if res == nil {
		return nil, err
	}
	rep := &Report{
		Accel: AccelKVM, Outcome: res.Outcome, BootMS: ms(res.BootTime), CommandMS: ms(res.CommandStart),
		WallMS: ms(res.Wall), Panic: res.Panic, Kernel: kernel, Initrd: initrd,
		CPUs: cfg.Machine.CPUs, MemoryMiB: uint64(cfg.Machine.Memory) >> 20, Exits: res.Exits,
		Unclaimed: res.Unclaimed,
	}
	finish(rep, res, time.Duration(cfg.Run.Timeout))
	if res.Outcome == vmm.OutcomeCanceled && quit.Load() {
		// Ctrl-A x: the user ended the session, as with QEMU.
		rep.ExitStatus, rep.Message = 0, ""
	}
	return rep, err
}

// finish sets the exit status and a message for the outcome.
func finish(rep *Report, res *vmm.Result, timeout time.Duration) {
	switch res.Outcome {
	case vmm.OutcomeExited:
		s := res.Status
		rep.GuestStatus = &s
		rep.ExitStatus = s
	case vmm.OutcomeInitFailed:
		rep.ExitStatus = proto.StatusInitFailed
		rep.Message = "the guest init could not run the command"
	case vmm.OutcomePowerOff, vmm.OutcomeReset, vmm.OutcomeCanceled:
		rep.ExitStatus = 0
		if res.Outcome == vmm.OutcomeCanceled {
			rep.ExitStatus = 130
			rep.Message = "canceled"
		}
	case vmm.OutcomePanic:
		rep.ExitStatus = ExitPanic
		rep.Message = "guest kernel panic: " + res.Panic
	case vmm.OutcomeTimeout:
		rep.ExitStatus = ExitTimeout
		rep.Message = fmt.Sprintf("timeout: the guest was still running after %s and was stopped", timeout)
	default:
		rep.ExitStatus = ExitError
		if res.Err != nil {
			rep.Message = res.Err.Error()
		}
	}
}

// runNested runs ember itself inside an L1 guest under QEMU/TCG, where
// kvm-amd gives a real /dev/kvm, and reports what the inner ember reported.
func runNested(ctx context.Context, cache *images.Cache, o Options, kernel, initrd string, run proto.Run) (*Report, error) {
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
	cfg := o.Config
	args := []string{self, "run", "--accel", "kvm",
		"--kernel", kernel, "--initrd", orNone(initrd),
		"--cmdline", cfg.Boot.Cmdline,
		"--cpus", strconv.Itoa(cfg.Machine.CPUs),
		"--memory", strconv.FormatUint(uint64(cfg.Machine.Memory), 10),
		"--interactive=" + strconv.FormatBool(o.Interactive && len(run.Args) == 0),
		"--result-file", filepath.Join(proto.IOMount, proto.ResultFile),
		"--log-level", levelName(o.Log),
	}
	for _, e := range run.Env {
		args = append(args, "--env", e)
	}
	if len(run.Args) > 0 {
		args = append(args, "--")
		args = append(args, run.Args...)
	}
	dir, _ := os.Getwd()
	memMiB := int(uint64(cfg.Machine.Memory)>>20) + 768
	if memMiB < 1536 {
		memMiB = 1536
	}
	start := time.Now()
	res, err := nested.Run(ctx, nested.Options{
		Kernel: l1k.Path, Initrd: l1i, Args: args, Dir: dir,
		CPUs: 2, MemoryMiB: memMiB,
		Stdin: o.Stdin, Stdout: o.Stdout, Stderr: o.Stderr, Log: o.Log,
	})
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return &Report{Accel: AccelNested, Outcome: vmm.OutcomeTimeout, ExitStatus: ExitTimeout,
				Message: fmt.Sprintf("timeout: the guest was still running after %s and was stopped", time.Duration(cfg.Run.Timeout)),
				Kernel:  kernel, Initrd: initrd, CPUs: cfg.Machine.CPUs, MemoryMiB: uint64(cfg.Machine.Memory) >> 20,
				WallMS: ms(time.Since(start))}, nil
		}
		return nil, err
	}
	rep := &Report{}
	if len(res.ResultJSON) > 0 {
		if err := json.Unmarshal(res.ResultJSON, rep); err != nil {
			return nil, fmt.Errorf("nested: inner result: %w", err)
		}
	} else {
		rep = &Report{Outcome: vmm.OutcomeError, ExitStatus: res.ExitStatus, Kernel: kernel, Initrd: initrd,
			Message: "ember inside the L1 guest ended without a result"}
	}
	rep.Accel = AccelNested
	rep.L1BootMS = ms(res.L1Boot)
	rep.WallMS = ms(time.Since(start))
	return rep, nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
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
