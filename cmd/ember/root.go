package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ember-vmm/ember/vmm/plan"
)

type globals struct {
	started  time.Time
	logLevel string
	cacheDir string
	log      *slog.Logger
}

func newRoot(started time.Time) *cobra.Command {
	g := &globals{started: started}
	root := &cobra.Command{
		Use:   "ember",
		Short: "Boot Linux micro-VMs on KVM in a fraction of a second",
		Long: `ember is a micro-VM manager: it boots a Linux kernel with a small initramfs on
KVM, runs a command or a shell in it, and exits with the command's status.
Where /dev/kvm is missing it runs itself inside a software-emulated machine
with nested KVM (--accel nested).`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			l, err := plan.NewLogger(cmd.ErrOrStderr(), g.logLevel)
			if err != nil {
				return err
			}
			g.log = l
			return nil
		},
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "warn", "log level: debug, info, warn or error")
	root.PersistentFlags().StringVar(&g.cacheDir, "cache-dir", "", "kernel and image cache (default $XDG_CACHE_HOME/ember or ~/.cache/ember)")
	root.AddCommand(newRunCmd(g), newRunPlanCmd(g), newTestCmd(g), newTestPlansCmd(g), newBenchCmd(g), newBenchInsideCmd(g), newImagesCmd(g), newVersionCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print ember's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "ember", version)
			return nil
		},
	}
}

// checkAccelFlag checks an --accel value of a command that takes no VM
// config (ember run's goes through the config's own check).
func checkAccelFlag(v string) error {
	switch v {
	case "auto", "kvm", "nested":
		return nil
	}
	return fmt.Errorf("--accel %q: expected auto, kvm or nested", v)
}

// addNestedStallFlag adds --nested-stall to a command that may run its
// VMs inside an L1 guest.
func addNestedStallFlag(cmd *cobra.Command, d *time.Duration) {
	cmd.Flags().DurationVar(d, "nested-stall", 0, "with --accel nested: how long the L1 guest may go without a heartbeat before it is taken for stuck (default 2m)")
}

// checkNestedStall refuses a negative --nested-stall (zero is the default).
func checkNestedStall(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("--nested-stall %s: must not be negative", d)
	}
	return nil
}

// progress returns where human progress lines go: stderr, unless the
// output is for machines.
func progress(quiet bool) io.Writer {
	if quiet {
		return nil
	}
	return os.Stderr
}

func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }
