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
	"slices"
	"strings"
	"time"

	"github.com/ember-vmm/ember/configs"
	"github.com/ember-vmm/ember/devices/virtio/blk"
	vfs "github.com/ember-vmm/ember/devices/virtio/fs"
	"github.com/ember-vmm/ember/devices/virtio/ninep"
	"github.com/ember-vmm/ember/devices/virtio/vsock"
	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/images"
	"github.com/ember-vmm/ember/vmm"
	"github.com/ember-vmm/ember/vmm/nested"
	"github.com/ember-vmm/ember/vmm/netsetup"
	"github.com/ember-vmm/ember/vmm/plan"
	"golang.org/x/sys/unix"
)

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
	// CommandStdin is the guest command's stdin when the VM is not
	// interactive (ember's stdin when that is not a terminal); nil gives
	// the command end of file at once.
	CommandStdin io.Reader
	// ConsoleLog, when set, is a file that receives the serial console
	// (kernel and init messages) of a VM running a command; otherwise
	// those go to Stderr, each line prefixed "console: ".
	ConsoleLog string
	// Stdout receives the command's stdout (the serial console of an
	// interactive VM); Stderr its stderr and ember's own notices.
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
	// Started is when the ember process started, where the phase
	// timeline begins (zero: at the VM's creation).
	Started time.Time
}

// Prepared is a VM resolved and checked, ready to run: its plan and the
// accelerator that will run it.
type Prepared struct {
	Plan  *plan.Plan
	Accel string
	cache *images.Cache
}

// Prepare resolves and checks the VM described by o (kernels fetched,
// images built, the machine checked against its kernel, the accelerator
// picked) without running it. Everything ember refuses, it refuses here,
// before KVM is opened or an L1 guest boots.
func Prepare(ctx context.Context, o Options) (*Prepared, error) {
	o = withLog(o)
	cfg := o.Config
	cache := &images.Cache{Dir: o.CacheDir, Log: o.Log, Progress: o.Progress}
	p, err := makePlan(ctx, cache, cfg, o)
	if err != nil {
		return nil, err
	}
	k, _, err := p.Check()
	if err != nil {
		return nil, err
	}
	k.Close()
	accel, err := PickAccel(cfg.Machine.Accel, o)
	if err != nil {
		return nil, err
	}
	if accel == AccelKVM {
		// A plan bounds its own run; the nested path bounds L1 as a whole.
		p.Timeout = time.Duration(cfg.Run.Timeout)
	}
	return &Prepared{Plan: p, Accel: accel, cache: cache}, nil
}

// Run runs a prepared VM and waits for it to end. Guest outcomes are in
// the Report, whose ExitStatus ember should exit with.
func (pr *Prepared) Run(ctx context.Context, o Options) (*plan.Report, error) {
	o = withLog(o)
	if pr.Accel != AccelNested {
		if err := OpenNetwork(pr.Plan); err != nil {
			return nil, err
		}
		return plan.Run(ctx, pr.Plan, o.PlanOptions())
	}
	if t := time.Duration(o.Config.Run.Timeout); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	pr.Plan.SizeFrom(o.Terminal)
	in, done := plan.OpenInput(pr.Plan, o.Stdin, o.Terminal)
	defer done()
	return runNested(ctx, pr.cache, o, pr.Plan, in)
}

// Run prepares the VM described by o and runs it.
func Run(ctx context.Context, o Options) (*plan.Report, error) {
	pr, err := Prepare(ctx, o)
	if err != nil {
		return nil, err
	}
	return pr.Run(ctx, o)
}

// PlanOptions are o's host side of a run on KVM.
func (o Options) PlanOptions() plan.Options {
	return plan.Options{KVMPath: o.KVMPath, Stdin: o.Stdin, Terminal: o.Terminal, CommandStdin: o.CommandStdin,
		Stdout: o.Stdout, Stderr: o.Stderr, Log: o.Log, Started: o.Started}
}

// makePlan resolves cfg (kernels fetched, images built, paths made
// absolute, the command chosen) into a plan.Plan.
func makePlan(ctx context.Context, cache *images.Cache, cfg *configs.VM, o Options) (*plan.Plan, error) {
	kernel, initrd, err := resolveBoot(ctx, cache, cfg, o)
	if err != nil {
		return nil, err
	}
	p := &plan.Plan{Kernel: kernel, Initrd: initrd, Cmdline: kernelCmdline(cfg.Boot), CPUs: cfg.Machine.CPUs,
		Memory: uint64(cfg.Machine.Memory), HugePages: cfg.Machine.HugePages, Run: proto.Run{Env: cfg.Run.Env, Stdio: !o.Interactive}, Interactive: o.Interactive,
		OwnInit: ownInit(cfg) && len(o.Command) == 0}
	if o.ConsoleLog != "" {
		if p.ConsoleLog, err = filepath.Abs(o.ConsoleLog); err != nil {
			return nil, fmt.Errorf("--console-log: %w", err)
		}
	}
	if p.Drives, err = drives(cfg); err != nil {
		return nil, err
	}
	p.RNG = cfg.RNG != nil
	if p.Nets, err = nets(cfg); err != nil {
		return nil, err
	}
	for i, sh := range cfg.Shares {
		dir, err := filepath.Abs(sh.Path)
		if err != nil {
			return nil, fmt.Errorf("share[%d].path: %w", i, err)
		}
		tag := fmt.Sprintf("share%d", i)
		if sh.Is9P() {
			p.Shares9P = append(p.Shares9P, ninep.Options{Tag: tag, Dir: dir, ReadOnly: sh.ReadOnly})
		} else {
			p.Shares = append(p.Shares, vfs.Options{Tag: tag, Dir: dir, ReadOnly: sh.ReadOnly})
		}
		p.Run.Shares = append(p.Run.Shares, proto.Share{Tag: tag, Path: sh.GuestPath(), ReadOnly: sh.ReadOnly, NineP: sh.Is9P()})
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
	case !o.Interactive && !ownInit(cfg):
		p.Run.Args = cfg.Run.Command
	}
	if cfg.Boot.Rootfs == "host" {
		if err := hostRoot(p, cfg); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// kernelCmdline is the user's part of the kernel command line.
func kernelCmdline(b configs.Boot) string {
	if b.PanicOnWarn {
		return strings.TrimSpace(b.Cmdline + " panic_on_warn=1 oops=panic")
	}
	return b.Cmdline
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
func lockDrives(p *plan.Plan, log *slog.Logger) (release func(), mounts []proto.NestedMount, err error) {
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

// hostRoot makes the host's / the guest's root, the virtme-ng way: read-
// only, the working directory shared writable at its path (the command
// runs there, with the caller's environment less what should not cross),
// and the directories of the program and of the files on its command line
// shared read-only where the guest's tmpfs would hide them (go test builds
// its binaries under /tmp).
func hostRoot(p *plan.Plan, cfg *configs.VM) error {
	cwd, err := os.Getwd()
	if err != nil {
		return fmt.Errorf("--rootfs host: %w", err)
	}
	add := func(tag, dir string, ro bool) {
		p.Shares = append(p.Shares, vfs.Options{Tag: tag, Dir: dir, ReadOnly: ro, HideSpecial: dir == "/"})
		if dir != "/" {
			p.Run.Shares = append(p.Run.Shares, proto.Share{Tag: tag, Path: dir, ReadOnly: ro})
		}
	}
	add("root", "/", true)
	p.Run.RootTag = "root"
	for _, d := range cfg.Boot.Tmpfs {
		if rest, ok := strings.CutPrefix(d, "~"); ok {
			home, err := os.UserHomeDir()
			if err != nil {
				return fmt.Errorf("boot.tmpfs %q: %w", d, err)
			}
			d = home + rest
		}
		d = filepath.Clean(d)
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			return fmt.Errorf("boot.tmpfs %q: not a directory on this host (the root is read-only in the guest: nothing can be made there)", d)
		}
		p.Run.Tmpfs = append(p.Run.Tmpfs, d)
	}
	covered := func(dir string) bool {
		for _, s := range p.Run.Shares {
			if dir == s.Path || strings.HasPrefix(dir, s.Path+"/") {
				return true
			}
		}
		return false
	}
	if cwd != "/" && !covered(cwd) {
		add("cwd", cwd, false)
	}
	for _, a := range p.Run.Args {
		if !strings.Contains(a, "/") {
			continue
		}
		if !filepath.IsAbs(a) {
			a = filepath.Join(cwd, a)
		}
		st, err := os.Stat(a)
		if err != nil {
			continue
		}
		dir := a
		if !st.IsDir() {
			dir = filepath.Dir(a)
		}
		if underTmpfs(p, dir) && !covered(dir) && len(p.Shares) < configs.MaxShares+2 {
			add(fmt.Sprintf("arg%d", len(p.Shares)), dir, true)
		}
	}
	p.Run.Dir = cwd
	p.Run.Env = append(hostEnv(os.Environ()), cfg.Run.Env...)
	return nil
}

// guestTmpfs are the host directories the guest covers with its own tmpfs.
var guestTmpfs = []string{"/tmp", "/var/tmp", "/run"}

func underTmpfs(p *plan.Plan, dir string) bool {
	for _, t := range append(slices.Clone(guestTmpfs), p.Run.Tmpfs...) {
		if dir == t || strings.HasPrefix(dir, t+"/") {
			return true
		}
	}
	return false
}

// hostEnv is the caller's environment without what names this host's
// session (agents, displays, terminals multiplexers, service managers).
func hostEnv(env []string) []string {
	drop := map[string]bool{"SSH_AUTH_SOCK": true, "SSH_AGENT_PID": true, "SSH_CONNECTION": true, "SSH_CLIENT": true,
		"SSH_TTY": true, "DISPLAY": true, "WAYLAND_DISPLAY": true, "XAUTHORITY": true, "XDG_RUNTIME_DIR": true,
		"XDG_SESSION_ID": true, "DBUS_SESSION_BUS_ADDRESS": true, "TMUX": true, "TMUX_PANE": true, "STY": true,
		"WINDOWID": true, "NOTIFY_SOCKET": true, "LISTEN_FDS": true, "LISTEN_PID": true, "LISTEN_FDNAMES": true,
		"INVOCATION_ID": true, "JOURNAL_STREAM": true, "PWD": true, "OLDPWD": true, "SHLVL": true, "_": true}
	var out []string
	for _, e := range env {
		if k, _, ok := strings.Cut(e, "="); ok && !drop[k] {
			out = append(out, e)
		}
	}
	return out
}

// shareMounts adds p's shares to what L1 mounts: a writable share is
// mounted read-write at its path; a read-only one is seen through L1's
// read-only view of the host (or a read-only mount where L1's own tmpfs
// would hide it).
func shareMounts(mounts []proto.NestedMount, files []string, p *plan.Plan) ([]proto.NestedMount, []string) {
	for _, sh := range shareDirs(p) {
		if sh.ReadOnly {
			files = append(files, sh.Dir)
			continue
		}
		if !slices.ContainsFunc(mounts, func(m proto.NestedMount) bool { return m.Path == sh.Dir }) {
			mounts = append(mounts, proto.NestedMount{Path: sh.Dir})
		}
	}
	return mounts, files
}

// shareDirs are the host directories of every share, whatever its
// transport.
func shareDirs(p *plan.Plan) []vfs.Options {
	dirs := slices.Clone(p.Shares)
	for _, sh := range p.Shares9P {
		dirs = append(dirs, vfs.Options{Dir: sh.Dir, ReadOnly: sh.ReadOnly})
	}
	return dirs
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

// PickAccel resolves an --accel value (auto, kvm, nested) to the
// accelerator that will run: auto takes KVM when it can boot stock
// kernels here and says so on o.Stderr when it falls back to nested.
func PickAccel(want string, o Options) (string, error) {
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
	if cfg.Boot.Kernel == images.MinimalName {
		// Everything built in: an image without modules.
		if kernel, err = cache.MinimalKernel(); err != nil {
			return "", "", err
		}
	} else if strings.HasPrefix(cfg.Boot.Kernel, "debian:") {
		if k, err = images.ResolveKernel(ctx, cache, cfg.Boot.Kernel); err != nil {
			return "", "", err
		}
		kernel = k.Path
	} else if kernel, err = filepath.Abs(cfg.Boot.Kernel); err != nil {
		return "", "", err
	} else if st, serr := os.Stat(kernel); serr == nil && st.IsDir() {
		// A kernel build tree: its bzImage (or vmlinux), and the modules
		// it built for the default image.
		tree := kernel
		if kernel, err = configs.KernelInTree(tree); err != nil {
			return "", "", err
		}
		if k, err = images.TreeKernel(tree, kernel); err != nil {
			return "", "", err
		}
	}
	switch cfg.Boot.Initrd {
	case "none", "":
	case "default":
		// A kernel file of the user's own gets an image without modules.
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

// ownInit: the VM boots an initramfs of the user's own with ember's
// default command (ember-info, which only ember's image has), so it runs
// no command: the guest's own init runs, and its power-off is the end.
func ownInit(cfg *configs.VM) bool {
	return cfg.Boot.Initrd != "default" && slices.Equal(cfg.Run.Command, configs.Default().Run.Command)
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

// planFile is the name of the plan in the nested IO share.
const planFile = "plan.json"

// runNested runs ember itself inside an L1 guest under QEMU/TCG, where
// kvm-amd gives a real /dev/kvm, hands it the plan, and reports what it
// reported.
func runNested(ctx context.Context, cache *images.Cache, o Options, p *plan.Plan, in *plan.ConsoleInput) (*plan.Report, error) {
	l1, err := prepareL1(ctx, cache, o)
	if err != nil {
		return nil, err
	}
	release, mounts, err := lockDrives(p, o.Log)
	if err != nil {
		return nil, err
	}
	defer release()
	inner, no, closeNet, err := nestedNetwork(p, o.Log)
	if err != nil {
		return nil, err
	}
	defer closeNet()
	planJSON, err := json.Marshal(inner)
	if err != nil {
		return nil, err
	}
	args := []string{l1.self, "run-plan", filepath.Join(proto.IOMount, planFile),
		"--result-file", filepath.Join(proto.IOMount, proto.ResultFile),
		"--log-level", levelName(o.Log),
	}
	dir, _ := os.Getwd()
	start := time.Now()
	base := &plan.Report{Accel: AccelNested, Kernel: p.Kernel, Initrd: p.Initrd, CPUs: p.CPUs, MemoryMiB: p.Memory >> 20}
	var stdin io.Reader
	if in != nil {
		stdin = in
	}
	var stdio *nested.Stdio
	l1Console := o.Stdout
	if p.Run.Stdio {
		stdio = &nested.Stdio{Stdin: o.CommandStdin, Stdout: o.Stdout, Stderr: o.Stderr}
		cl, closeLog, err := plan.ConsoleLog(p.ConsoleLog, false, o.Stderr)
		if err != nil {
			return nil, err
		}
		defer closeLog()
		l1Console = cl
		if p.ConsoleLog != "" {
			// The inner ember appends the inner VM's console.
			inner.ConsoleAppend = true
			mounts = append(mounts, proto.NestedMount{Path: filepath.Dir(p.ConsoleLog)})
			if planJSON, err = json.Marshal(inner); err != nil {
				return nil, err
			}
		}
	}
	files := []string{p.Kernel, p.Initrd}
	for _, d := range p.Drives {
		files = append(files, d.Path)
	}
	mounts, files = shareMounts(mounts, files, p)
	res, err := nested.Run(ctx, nested.Options{
		Kernel: l1.kernel, Initrd: l1.initrd, Args: args, Dir: dir, Mounts: mounts,
		CPUs: L1CPUs, MemoryMiB: L1MemoryMiB(p.Memory),
		Stdin: stdin, Stdout: l1Console, Stderr: o.Stderr, Log: o.Log, Stdio: stdio,
		Files:   files,
		IOFiles: map[string][]byte{planFile: planJSON}, Stall: o.NestedStall,
		Relay: no.Relay, RelayMAC: no.RelayMAC, Taps: no.Taps,
	})
	base.WallMS = plan.Millis(time.Since(start))
	switch {
	case err == nil:
	case errors.Is(err, nested.ErrL1Stuck):
		base.Outcome, base.ExitStatus, base.Message = plan.OutcomeStuck, plan.ExitStuck, err.Error()+
			"\n(if L1 was only slow, --nested-stall gives it longer)"
		return base, nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		base.Outcome = vmm.OutcomeTimeout
		plan.Finish(base, &vmm.Result{Outcome: base.Outcome}, true)
		return base, nil
	case ctx.Err() != nil:
		base.Outcome = vmm.OutcomeCanceled
		plan.Finish(base, &vmm.Result{Outcome: base.Outcome}, true)
		return base, nil
	default:
		return nil, err
	}
	rep := &plan.Report{}
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
	rep.L1BootMS = plan.Millis(res.L1Boot)
	rep.WallMS = plan.Millis(time.Since(start))
	return rep, nil
}

// OpenNetwork makes the host side of p's network ready in this process,
// before the VMM runs: L1's relay NIC and bridges when p runs inside L1,
// then a tap per interface, whose descriptor goes into the plan for the
// VMM to inherit. A tap ember created disappears with its last
// descriptor, so a run that fails leaves none behind.
func OpenNetwork(p *plan.Plan) error {
	if p.L1Net != nil {
		if err := netsetup.SetupL1(p.L1Net); err != nil {
			return err
		}
		p.L1Net = nil
	}
	for i := range p.Nets {
		n := &p.Nets[i]
		fd, name, err := netsetup.OpenTap(n.Tap, n.Bridge)
		if err != nil {
			for _, m := range p.Nets[:i] {
				_ = unix.Close(m.FD)
			}
			return fmt.Errorf("net %d: %w", i, err)
		}
		n.FD, n.Tap = fd, name
	}
	return nil
}

// nestedNetwork sets up, on this host, what the plan's network devices
// need when the VM runs inside L1: the vsock socket with its relay into
// L1, and the taps (created or attached here, as without nesting), which
// L1 gets as NICs and bridges to the inner VM's taps. It returns the
// inner ember's plan and the L1 options; closeNet undoes it all.
func nestedNetwork(p *plan.Plan, log *slog.Logger) (inner *plan.Plan, no nested.Options, closeNet func(), err error) {
	var closers []func() error
	closeNet = func() {
		for _, c := range slices.Backward(closers) {
			_ = c()
		}
	}
	cp := *p
	inner = &cp
	var l1 nested.L1Network
	if p.Vsock != nil {
		r, err := nested.StartHostRelay(p.Vsock.UDS, log)
		if err != nil {
			return nil, no, nil, fmt.Errorf("vsock: %w", err)
		}
		closers = append(closers, r.Close)
		ir := r.Inner()
		no.Relay, no.RelayMAC = r, nested.RandomMAC()
		l1.RelayMAC = no.RelayMAC.String()
		inner.Vsock, inner.VsockRelay = &vsock.Options{CID: p.Vsock.CID}, &ir
	}
	inner.Nets = nil
	for i, n := range p.Nets {
		fd, _, err := netsetup.OpenTap(n.Tap, n.Bridge)
		if err != nil {
			closeNet()
			return nil, no, nil, fmt.Errorf("net %d: %w", i, err)
		}
		f := os.NewFile(uintptr(fd), "tap")
		closers = append(closers, f.Close)
		mac := nested.RandomMAC()
		no.Taps = append(no.Taps, nested.TapNIC{File: f, MAC: mac})
		l1.Bridges = append(l1.Bridges, nested.L1Bridge{NIC: mac.String(), Name: nested.BridgeName(i)})
		inner.Nets = append(inner.Nets, vmm.Net{Bridge: nested.BridgeName(i), MAC: n.MAC})
	}
	if l1.RelayMAC != "" || len(l1.Bridges) > 0 {
		inner.L1Net = &l1
	}
	return inner, no, closeNet, nil
}

// l1Files are what every nested run needs: L1's kernel and image, and
// the ember executable to run inside.
type l1Files struct{ kernel, initrd, self string }

func prepareL1(ctx context.Context, cache *images.Cache, o Options) (l1Files, error) {
	var f l1Files
	k, err := images.ResolveKernel(ctx, cache, "debian:amd64")
	if err != nil {
		return f, fmt.Errorf("nested L1 kernel: %w", err)
	}
	ib, err := InitBinary(o.InitBinary)
	if err != nil {
		return f, err
	}
	if f.initrd, err = cache.L1Initramfs(ctx, k, ib); err != nil {
		return f, fmt.Errorf("nested L1 initramfs: %w", err)
	}
	f.kernel, f.self = k.Path, o.Self
	if f.self == "" {
		if f.self, err = os.Executable(); err != nil {
			return f, err
		}
	}
	return f, nil
}

// L1Run is an ember command run inside one L1 guest.
type L1Run struct {
	// Args follow the ember executable; InL1 adds --result-file (in the
	// IO share) and --log-level.
	Args []string
	// Files and Mounts are host paths the command uses (nested.Options).
	Files  []string
	Mounts []proto.NestedMount
	// IOFiles are the command's input files, at proto.IOMount/<name>.
	IOFiles   map[string][]byte
	MemoryMiB int
}

// InL1 runs r inside one L1 guest, its console going to o.Stderr. The
// result's ResultJSON is what the inner ember wrote to its result file.
func InL1(ctx context.Context, cache *images.Cache, o Options, r L1Run) (*nested.Result, error) {
	o = withLog(o)
	l1, err := prepareL1(ctx, cache, o)
	if err != nil {
		return nil, err
	}
	dir, _ := os.Getwd()
	args := append([]string{l1.self}, r.Args...)
	args = append(args, "--result-file", filepath.Join(proto.IOMount, proto.ResultFile), "--log-level", levelName(o.Log))
	res, err := nested.Run(ctx, nested.Options{
		Kernel: l1.kernel, Initrd: l1.initrd, Args: args, Dir: dir, Mounts: r.Mounts,
		CPUs: L1CPUs, MemoryMiB: r.MemoryMiB,
		Stdout: o.Stderr, Stderr: o.Stderr, Log: o.Log, Files: r.Files,
		IOFiles: r.IOFiles, Stall: o.NestedStall,
	})
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return res, err
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
