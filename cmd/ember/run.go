package main

import (
	"fmt"
	"os"
	"time"

	"github.com/ember-vmm/ember/configs"
	"github.com/ember-vmm/ember/images"
	"github.com/ember-vmm/ember/vmm/launch"
	"github.com/ember-vmm/ember/vmm/plan"
	"github.com/spf13/cobra"
)

type runFlags struct {
	kernel, initrd, cmdline, memory, accel string
	rootfs                                 string
	cpus                                   int
	hugePages                              bool
	timeout                                time.Duration
	env                                    []string
	json                                   bool
	resultFile                             string
	kvmPath                                string
	nestedStall                            time.Duration
	drives                                 []string
	rng                                    bool
	vsock                                  string
	nets                                   []string
	shares                                 []string
	tmpfs                                  []string
	consoleLog                             string
	panicOnWarn                            bool
}

func newRunCmd(g *globals) *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:   "run [CONFIG.toml] [flags] [-- COMMAND [ARGS...]]",
		Short: "Boot a VM and run a command or a shell in it",
		Long: `Boot a VM from CONFIG.toml (or the built-in default), with flags overriding
the file. With COMMAND, the guest runs it and ember exits with its exit
status. Without one, on a terminal you get a shell on the serial console
(Ctrl-A x quits); without a terminal the config's run.command runs.

Without a terminal, the command's stdout and stderr are ember's, byte for
byte, and ember's stdin is the command's; kernel messages go to stderr,
each line prefixed "console: " (or to --console-log FILE).

Exit status: the command's own; 122 the nested L1 guest stopped responding;
123 guest kernel panic or crash (triple fault); 124 timeout; 125 ember error (bad config, missing
file, no accelerator); 127 the guest init could not start the command;
130 ember was interrupted.`,
		Example: `  ember run
  ember run -- uname -a
  ember run vm.toml --cpus 2 --memory 1G -- sh -c 'exit 42'
  ember run --drive path=disk.img --drive path=base.img,ro --rng -- ls -l /dev/vda /dev/vdb
  ember run --kernel debian:amd64 --accel nested --json -- true`,
		Args: func(cmd *cobra.Command, args []string) error {
			if n := cmd.ArgsLenAtDash(); n > 1 || (n < 0 && len(args) > 1) {
				return fmt.Errorf("at most one CONFIG file before --; put the guest command after --")
			}
			return nil
		},
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return []string{"toml"}, cobra.ShellCompDirectiveFilterFileExt
		},
		RunE: func(cmd *cobra.Command, args []string) error { return runVM(cmd, g, f, args) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.kernel, "kernel", "", `kernel: a bzImage or ELF vmlinux path, a kernel build tree, "debian:cloud-amd64" / "debian:amd64", or "minimal" (ember images kernel --minimal)`)
	fl.StringVar(&f.initrd, "initrd", "", `initramfs path, "default" (ember's u-root image for a debian: kernel) or "none"`)
	fl.StringVar(&f.cmdline, "cmdline", "", "kernel command line, appended to what ember needs")
	fl.IntVar(&f.cpus, "cpus", 0, "number of vCPUs")
	fl.BoolVar(&f.hugePages, "huge-pages", false, "back guest RAM with transparent huge pages (faster paging, more host memory); =false for 4 KiB pages; unset follows the host's THP policy")
	fl.StringVar(&f.memory, "memory", "", "guest RAM, e.g. 512M or 2G")
	fl.StringVar(&f.accel, "accel", "", "accelerator: auto, kvm or nested")
	fl.DurationVar(&f.timeout, "timeout", 0, "stop the guest after this long (e.g. 30s); exit status 124")
	addNestedStallFlag(cmd, &f.nestedStall)
	fl.StringArrayVar(&f.env, "env", nil, "KEY=VALUE for the guest command (repeatable)")
	fl.StringArrayVar(&f.drives, "drive", nil, "virtio disk: path=IMAGE[,ro][,id=SERIAL] (repeatable; adds to the config's drives)")
	fl.StringArrayVar(&f.nets, "net", nil, "virtio-net over a tap: tap=NAME[,mac=MAC][,bridge=BRIDGE] (repeatable; a missing tap is created)")
	fl.StringVar(&f.rootfs, "rootfs", "", `the guest's root: "initramfs" (ember's image) or "host" (this host's / read-only, the working directory writable, the command run there with your environment)`)
	fl.StringArrayVar(&f.shares, "share", nil, "host directory for the guest: HOSTDIR[:GUESTDIR][,ro][,9p], over virtio-fs (virtio-9p with ,9p), mounted at GUESTDIR (default: the same path) (repeatable)")
	fl.StringArrayVar(&f.tmpfs, "tmpfs", nil, `with --rootfs host: a host directory the guest covers with an empty writable tmpfs, "~" for your home (repeatable)`)
	fl.BoolVar(&f.rng, "rng", false, "give the guest a virtio entropy device (/dev/hwrng)")
	fl.StringVar(&f.vsock, "vsock", "", "virtio-vsock: cid=N,uds=PATH (host connects to PATH, writes \"CONNECT <port>\\n\"; guest reaches PATH_<port>)")
	fl.BoolVar(&f.json, "json", false, "print a JSON result on stdout when the VM ends")
	fl.BoolVar(&f.panicOnWarn, "panic-on-warn", false, "a kernel warning or oops panics the guest (panic_on_warn=1 oops=panic): exit 123")
	fl.StringVar(&f.consoleLog, "console-log", "", "write the serial console (kernel and init messages) to this file instead of stderr")
	addHiddenRunFlags(cmd, f)
	_ = cmd.RegisterFlagCompletionFunc("accel", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{"auto", "kvm", "nested"}, cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}

// addHiddenRunFlags are for ember's own use (the nested path, tests).
func addHiddenRunFlags(cmd *cobra.Command, f *runFlags) {
	fl := cmd.Flags()
	fl.StringVar(&f.resultFile, "result-file", "", "also write the JSON result to this file")
	fl.StringVar(&f.kvmPath, "kvm-device", "/dev/kvm", "KVM device")
	_ = fl.MarkHidden("result-file")
	_ = fl.MarkHidden("kvm-device")
}

func runVM(cmd *cobra.Command, g *globals, f *runFlags, args []string) error {
	var file string
	var command []string
	if n := cmd.ArgsLenAtDash(); n >= 0 {
		if n == 1 {
			file = args[0]
		}
		command = args[n:]
	} else if len(args) == 1 {
		file = args[0]
	}
	var cfg *configs.VM
	var err error
	if file != "" {
		if cfg, err = configs.Load(file); err != nil {
			return err
		}
	} else {
		cfg = configs.Default()
	}
	if err := applyFlags(cmd, cfg, f); err != nil {
		return err
	}
	// Validation happens once, after the flags, before anything runs.
	if err := cfg.Validate(); err != nil {
		return err
	}
	interactive := len(command) == 0 && isTerminal(os.Stdin) && isTerminal(os.Stdout)
	cacheDir := g.cacheDir
	if cacheDir == "" {
		cacheDir = images.DefaultDir()
	}
	o := launch.Options{
		Config: cfg, Command: command, Interactive: interactive, KVMPath: f.kvmPath,
		Stderr: os.Stderr, Log: g.log, Progress: progress(false), CacheDir: cacheDir, NestedStall: f.nestedStall,
		ConsoleLog: f.consoleLog, Started: g.started,
	}
	pr, err := launch.Prepare(cmd.Context(), o)
	if err != nil {
		return err
	}
	s := session(g, f, interactive, true)
	if pr.Accel == launch.AccelKVM {
		return runPlan(cmd, g, s, pr.Plan)
	}
	return serve(s, func(po plan.Options) (*plan.Report, error) {
		o.Stdin, o.Terminal, o.CommandStdin, o.Stdout, o.Stderr = po.Stdin, po.Terminal, po.CommandStdin, po.Stdout, po.Stderr
		return pr.Run(cmd.Context(), o)
	})
}

// runPlan runs a resolved VM on KVM in ember-vmm, which links only the
// VMM, so this process's config parser, image builder and CLI do not stay
// resident beside the guest; without an ember-vmm beside ember, here.
func runPlan(cmd *cobra.Command, g *globals, s plan.Session, p *plan.Plan) error {
	if err := launch.OpenNetwork(p); err != nil {
		return err
	}
	vmm, err := plan.VMMBinary()
	if err == nil {
		return plan.Handoff(vmm, p, s, g.logLevel)
	}
	g.log.Info("running the VM in this process", "reason", err)
	return serve(s, func(o plan.Options) (*plan.Report, error) {
		return plan.Run(cmd.Context(), p, o)
	})
}

// session is how a run of this command line meets its caller.
func session(g *globals, f *runFlags, interactive, announce bool) plan.Session {
	return plan.Session{Interactive: interactive, JSON: f.json, ResultFile: f.resultFile, Announce: announce,
		KVMPath: f.kvmPath, Log: g.log, Started: g.started}
}

// serve runs a VM for this command line and turns its exit status into
// ember's.
func serve(s plan.Session, run func(plan.Options) (*plan.Report, error)) error {
	status, err := s.Serve(run)
	if err != nil {
		return err
	}
	if status != 0 {
		return exitError{status}
	}
	return nil
}

// newRunPlanCmd is how ember runs itself inside a nested L1 guest: the
// outer ember resolved and checked the VM and passes it as a plan file.
func newRunPlanCmd(g *globals) *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:    "run-plan PLAN.json",
		Short:  "Run a resolved VM plan on KVM (used by --accel nested)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := readPlan(args[0])
			if err != nil {
				return err
			}
			s := session(g, f, p.Interactive, false)
			s.Relayed = true
			return runPlan(cmd, g, s, p)
		},
	}
	addHiddenRunFlags(cmd, f)
	return cmd
}

func readPlan(path string) (*plan.Plan, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	defer f.Close()
	p, err := plan.ReadPlan(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// applyFlags overrides config values with the flags the user set.
func applyFlags(cmd *cobra.Command, cfg *configs.VM, f *runFlags) error {
	fl := cmd.Flags()
	if fl.Changed("kernel") {
		cfg.Boot.Kernel = f.kernel
	}
	if fl.Changed("rootfs") {
		cfg.Boot.Rootfs = f.rootfs
	}
	cfg.Boot.Tmpfs = append(cfg.Boot.Tmpfs, f.tmpfs...)
	if fl.Changed("initrd") {
		cfg.Boot.Initrd = f.initrd
	}
	if fl.Changed("cmdline") {
		cfg.Boot.Cmdline = f.cmdline
	}
	if f.panicOnWarn {
		cfg.Boot.PanicOnWarn = true
	}
	if fl.Changed("cpus") {
		cfg.Machine.CPUs = f.cpus
	}
	if fl.Changed("huge-pages") {
		cfg.Machine.HugePages = &f.hugePages
	}
	if fl.Changed("memory") {
		s, err := configs.ParseSize(f.memory)
		if err != nil {
			return fmt.Errorf("--memory: %w", err)
		}
		cfg.Machine.Memory = s
	}
	if fl.Changed("accel") {
		cfg.Machine.Accel = f.accel
	}
	if err := checkNestedStall(f.nestedStall); err != nil {
		return err
	}
	if fl.Changed("timeout") {
		if f.timeout < 0 {
			return fmt.Errorf("--timeout %s: must not be negative", f.timeout)
		}
		cfg.Run.Timeout = configs.Duration(f.timeout)
	}
	if fl.Changed("env") {
		cfg.Run.Env = append(cfg.Run.Env, f.env...)
	}
	for _, d := range f.drives {
		drive, err := configs.ParseDrive(d)
		if err != nil {
			return fmt.Errorf("--drive %w", err)
		}
		cfg.Drives = append(cfg.Drives, drive)
	}
	for _, sh := range f.shares {
		share, err := configs.ParseShare(sh)
		if err != nil {
			return fmt.Errorf("--share %w", err)
		}
		cfg.Shares = append(cfg.Shares, share)
	}
	if f.rng {
		cfg.RNG = &configs.RNG{}
	}
	for _, n := range f.nets {
		nic, err := configs.ParseNet(n)
		if err != nil {
			return fmt.Errorf("--net %w", err)
		}
		cfg.Nets = append(cfg.Nets, nic)
	}
	if fl.Changed("vsock") {
		v, err := configs.ParseVsock(f.vsock)
		if err != nil {
			return fmt.Errorf("--vsock %w", err)
		}
		cfg.Vsock = &v
	}
	if cfg.Source == "" {
		cfg.Source = "flags"
	}
	return nil
}
