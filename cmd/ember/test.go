package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ember-vmm/ember/configs"
	"github.com/ember-vmm/ember/images"
	"github.com/ember-vmm/ember/vmm/launch"
	"github.com/spf13/cobra"
)

type testFlags struct {
	junit, accel, resultFile string
	json                     bool
	parallel                 int
	nestedStall              time.Duration
}

func newTestCmd(g *globals) *cobra.Command {
	f := &testFlags{}
	cmd := &cobra.Command{
		Use:   "test MATRIX.toml [flags]",
		Short: "Run a matrix of kernels and commands, each in a fresh VM; report as a table and JUnit XML",
		Long: `Run every [[target]] of MATRIX.toml (name and command required; kernel,
initrd, cmdline, cpus, memory, timeout, env, panic_on_warn default as in
ember run), up to "parallel" at once, and print a table. Each target
ends as passed, failed (with its exit status), panicked, timed-out,
boot-failed or error; --junit writes them as JUnit XML with each target's
console log. Under --accel nested all targets run inside one L1 guest.

Exit status: 0 if every target passed, 1 if any did not, 125 if ember
could not run the matrix (bad file, no accelerator).`,
		Example: `  ember test matrix.toml --junit report.xml

  # matrix.toml
  parallel = 2
  [[target]]
  name = "cloud"
  command = ["sh", "-c", "uname -r && ember-info"]
  [[target]]
  name = "generic-2cpu"
  kernel = "debian:amd64"
  cpus = 2
  timeout = "60s"
  command = ["true"]`,
		Args: cobra.ExactArgs(1),
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return []string{"toml"}, cobra.ShellCompDirectiveFilterFileExt
		},
		RunE: func(cmd *cobra.Command, args []string) error { return runTests(cmd, g, f, args[0]) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.junit, "junit", "", "write a JUnit XML report to this file")
	fl.BoolVar(&f.json, "json", false, "print the results as JSON instead of a table")
	fl.StringVar(&f.accel, "accel", "auto", "accelerator: auto, kvm or nested")
	fl.IntVar(&f.parallel, "parallel", 0, "targets run at once (overrides the file's parallel)")
	addNestedStallFlag(cmd, &f.nestedStall)
	_ = cmd.RegisterFlagCompletionFunc("accel", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{"auto", "kvm", "nested"}, cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}

func runTests(cmd *cobra.Command, g *globals, f *testFlags, path string) error {
	m, err := configs.LoadMatrix(path)
	if err != nil {
		return err
	}
	if cmd.Flags().Changed("parallel") {
		if f.parallel < 1 || f.parallel > configs.MaxParallel {
			return fmt.Errorf("--parallel %d: expected 1..%d", f.parallel, configs.MaxParallel)
		}
		m.Parallel = f.parallel
	}
	if err := checkAccelFlag(f.accel); err != nil {
		return err
	}
	if err := checkNestedStall(f.nestedStall); err != nil {
		return err
	}
	cacheDir := g.cacheDir
	if cacheDir == "" {
		cacheDir = images.DefaultDir()
	}
	o := launch.Options{Stderr: os.Stderr, Log: g.log, Progress: progress(false), CacheDir: cacheDir, NestedStall: f.nestedStall}
	started := time.Now()
	fmt.Fprintf(os.Stderr, "ember: %d targets, %d at a time\n", len(m.Targets), m.Parallel)
	rep, err := launch.RunMatrix(cmd.Context(), m, f.accel, o, func(t launch.TargetResult) {
		fmt.Fprintf(os.Stderr, "ember: %s: %s in %.1fs\n", t.Name, t.Result, t.Seconds)
	})
	if err != nil {
		return err
	}
	if f.junit != "" {
		var b bytes.Buffer
		if err := launch.WriteJUnit(&b, rep, started); err != nil {
			return fmt.Errorf("--junit: %w", err)
		}
		if err := os.WriteFile(f.junit, b.Bytes(), 0o644); err != nil {
			return fmt.Errorf("--junit: %w", err)
		}
	}
	if f.json {
		out, _ := json.MarshalIndent(rep, "", "  ")
		fmt.Println(string(out))
	} else {
		printTable(rep)
	}
	if !rep.Passed() {
		return exitError{1}
	}
	return nil
}

func printTable(rep *launch.MatrixReport) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tKERNEL\tCPUS\tRESULT\tSTATUS\tTIME")
	counts := map[string]int{}
	for _, t := range rep.Targets {
		counts[t.Result]++
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%.1fs\n", t.Name, t.Kernel, t.CPUs, t.Result, t.Status, t.Seconds)
	}
	tw.Flush()
	var parts []string
	for r, n := range counts {
		parts = append(parts, fmt.Sprintf("%d %s", n, r))
	}
	sort.Strings(parts)
	fmt.Printf("%s (%d targets, %s, %.1fs)\n", strings.Join(parts, ", "), len(rep.Targets), rep.Accel, rep.Seconds)
}

// newTestPlansCmd runs a resolved matrix on KVM: the ember inside the L1
// guest of a nested `ember test`.
func newTestPlansCmd(g *globals) *cobra.Command {
	f := &testFlags{}
	cmd := &cobra.Command{
		Use:    "test-plans PLANS.json",
		Short:  "Run resolved test targets on KVM (used by ember test under --accel nested)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			mp, err := launch.ReadTestPlans(args[0])
			if err != nil {
				return err
			}
			res := launch.RunPlans(cmd.Context(), mp, launch.Options{Stderr: os.Stderr, Log: g.log}, func(t launch.TargetResult) {
				fmt.Fprintf(os.Stderr, "ember: %s: %s in %.1fs\n", t.Name, t.Result, t.Seconds)
			})
			out, err := json.Marshal(res)
			if err != nil {
				return err
			}
			return os.WriteFile(f.resultFile, out, 0o644)
		},
	}
	cmd.Flags().StringVar(&f.resultFile, "result-file", "", "write the results as JSON to this file")
	_ = cmd.MarkFlagRequired("result-file")
	return cmd
}
