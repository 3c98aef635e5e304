package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/ember-vmm/ember/configs"
	"github.com/ember-vmm/ember/images"
	"github.com/ember-vmm/ember/vmm/launch"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

type runFlags struct {
	kernel, initrd, cmdline, memory, accel string
	cpus                                   int
	timeout                                time.Duration
	env                                    []string
	json                                   bool
	resultFile                             string
	interactive                            string
	kvmPath                                string
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

Exit status: the command's own; 123 guest kernel panic; 124 timeout;
125 ember error (bad config, missing file, no accelerator).`,
		Example: `  ember run
  ember run -- uname -a
  ember run vm.toml --cpus 2 --memory 1G -- sh -c 'exit 42'
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
	fl.StringVar(&f.kernel, "kernel", "", `kernel: a bzImage or ELF vmlinux path, or "debian:cloud-amd64" / "debian:amd64"`)
	fl.StringVar(&f.initrd, "initrd", "", `initramfs path, "default" (ember's u-root image for a debian: kernel) or "none"`)
	fl.StringVar(&f.cmdline, "cmdline", "", "kernel command line, appended to what ember needs")
	fl.IntVar(&f.cpus, "cpus", 0, "number of vCPUs")
	fl.StringVar(&f.memory, "memory", "", "guest RAM, e.g. 512M or 2G")
	fl.StringVar(&f.accel, "accel", "", "accelerator: auto, kvm or nested")
	fl.DurationVar(&f.timeout, "timeout", 0, "stop the guest after this long (e.g. 30s); exit status 124")
	fl.StringArrayVar(&f.env, "env", nil, "KEY=VALUE for the guest command (repeatable)")
	fl.BoolVar(&f.json, "json", false, "print a JSON result on stdout when the VM ends")
	fl.StringVar(&f.resultFile, "result-file", "", "also write the JSON result to this file")
	fl.StringVar(&f.interactive, "interactive", "auto", "console mode: auto (a shell when stdin is a terminal and no command is given), true or false")
	fl.StringVar(&f.kvmPath, "kvm-device", "/dev/kvm", "KVM device")
	_ = fl.MarkHidden("result-file")
	_ = fl.MarkHidden("interactive")
	_ = fl.MarkHidden("kvm-device")
	_ = cmd.RegisterFlagCompletionFunc("accel", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{"auto", "kvm", "nested"}, cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
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
	if err := cfg.Validate(); err != nil {
		return err
	}

	interactive := false
	switch f.interactive {
	case "auto":
		interactive = len(command) == 0 && isTerminal(os.Stdin) && isTerminal(os.Stdout)
	case "true":
		interactive = true
	case "false":
	default:
		return fmt.Errorf("--interactive %q: expected auto, true or false", f.interactive)
	}

	cacheDir := g.cacheDir
	if cacheDir == "" {
		cacheDir = images.DefaultDir()
	}
	var stdin io.Reader = os.Stdin
	ctx := cmd.Context()
	if interactive && isTerminal(os.Stdin) {
		old, err := term.MakeRaw(int(os.Stdin.Fd()))
		if err != nil {
			return fmt.Errorf("terminal raw mode: %w", err)
		}
		defer term.Restore(int(os.Stdin.Fd()), old)
		fmt.Fprint(os.Stderr, "ember: console attached; Ctrl-A x quits\r\n")
	}
	rep, err := launch.Run(ctx, launch.Options{
		Config: cfg, Command: command, Interactive: interactive, KVMPath: f.kvmPath,
		Stdin: stdin, Stdout: os.Stdout, Stderr: os.Stderr, Log: g.log,
		Progress: progress(false), CacheDir: cacheDir,
	})
	if err != nil {
		return err
	}
	out, _ := json.MarshalIndent(rep, "", "  ")
	if f.resultFile != "" {
		if err := os.WriteFile(f.resultFile, append(out, '\n'), 0o644); err != nil {
			return fmt.Errorf("--result-file: %w", err)
		}
	}
	if f.json {
		fmt.Fprintln(cmd.OutOrStdout(), string(out))
	}
	if rep.Message != "" {
		fmt.Fprintln(os.Stderr, "ember:", rep.Message)
	}
	g.log.Info("vm ended", "accel", rep.Accel, "outcome", rep.Outcome, "exit_status", rep.ExitStatus,
		"boot_ms", rep.BootMS, "wall_ms", rep.WallMS)
	if rep.ExitStatus != 0 {
		return exitError{rep.ExitStatus}
	}
	return nil
}

// applyFlags overrides config values with the flags the user set.
func applyFlags(cmd *cobra.Command, cfg *configs.VM, f *runFlags) error {
	fl := cmd.Flags()
	if fl.Changed("kernel") {
		cfg.Boot.Kernel = f.kernel
	}
	if fl.Changed("initrd") {
		cfg.Boot.Initrd = f.initrd
	}
	if fl.Changed("cmdline") {
		cfg.Boot.Cmdline = f.cmdline
	}
	if fl.Changed("cpus") {
		cfg.Machine.CPUs = f.cpus
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
	if fl.Changed("timeout") {
		if f.timeout < 0 {
			return fmt.Errorf("--timeout %s: must not be negative", f.timeout)
		}
		cfg.Run.Timeout = configs.Duration(f.timeout)
	}
	if fl.Changed("env") {
		cfg.Run.Env = append(cfg.Run.Env, f.env...)
	}
	if cfg.Source == "" {
		cfg.Source = "flags"
	}
	return nil
}
