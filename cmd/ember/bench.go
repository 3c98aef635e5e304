package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/ember-vmm/ember/images"
	"github.com/ember-vmm/ember/vmm/bench"
)

type benchFlags struct {
	runs, memory       int
	density            int
	kernel, accel, svg string
	cmdline            string
	json, noContainers bool
	noDocker           bool
}

func newBenchCmd(g *globals) *cobra.Command {
	f := &benchFlags{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Compare boot time and memory of ember, QEMU and container runtimes on this host",
		Long: `Start the same tiny root file system (an init that prints a marker and ends)
under every contender, a warm-up run and then -n measured runs each, and
report the time to the marker and to exit (median, p90, min, max) and
memory: ember; QEMU's microvm and q35 machines on the same kernel, initrd
and command line; crun and runc on an OCI bundle of that root file
system; docker run of an image imported from it. ember also runs once
more with its own init and image, labelled so. Contenders that cannot run
are listed with the reason.

Without a usable /dev/kvm the VMs run inside one nested L1 guest, and so
do crun and runc (the same CPU and kernel for all); the containers are
then also measured on this host, labelled "host". Ratios are only honest
between rows of the same place.`,
		Example: `  ember bench
  ember bench -n 10 --json > bench.json
  ember bench --svg bench.svg
  ember bench --density 8`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cacheDir := g.cacheDir
			if cacheDir == "" {
				cacheDir = images.DefaultDir()
			}
			if err := checkAccelFlag(f.accel); err != nil {
				return err
			}
			if f.runs < 1 {
				return fmt.Errorf("--runs %d: expected at least 1", f.runs)
			}
			if f.svg != "" {
				// Checked before the runs, so their results are not lost.
				if st, err := os.Stat(filepath.Dir(f.svg)); err != nil || !st.IsDir() {
					return fmt.Errorf("--svg %s: %s is not a directory", f.svg, filepath.Dir(f.svg))
				}
			}
			if f.density < 0 || f.density > 256 {
				return fmt.Errorf("--density %d: expected 1 to 256 instances", f.density)
			}
			if f.memory < 64 || f.memory > 16384 {
				return fmt.Errorf("--memory %d: expected 64 to 16384 MiB", f.memory)
			}
			rep, err := bench.Main(cmd.Context(), bench.Config{
				Runs: f.runs, Kernel: f.kernel, MemoryMiB: f.memory, Accel: f.accel, CacheDir: cacheDir,
				Containers: !f.noContainers, Docker: !f.noDocker, Log: g.log, Stderr: os.Stderr, Density: f.density, Cmdline: f.cmdline,
			})
			if err != nil {
				return err
			}
			if f.svg != "" {
				var b bytes.Buffer
				if err := rep.SVG(&b); err != nil {
					return err
				}
				if err := os.WriteFile(f.svg, b.Bytes(), 0o644); err != nil {
					return fmt.Errorf("--svg: %w", err)
				}
			}
			if f.json {
				out, _ := json.MarshalIndent(rep, "", "  ")
				fmt.Println(string(out))
			} else {
				rep.Table(os.Stdout)
			}
			for _, r := range rep.Results {
				if r.Available {
					return nil
				}
			}
			for _, r := range rep.Density {
				if r.Available {
					return nil
				}
			}
			return fmt.Errorf("%w (see the reasons above)", bench.ErrNoContender)
		},
	}
	fl := cmd.Flags()
	fl.IntVarP(&f.runs, "runs", "n", 5, "measured runs per contender (after one warm-up run)")
	fl.StringVar(&f.kernel, "kernel", "debian:cloud-amd64", `the VMs' kernel: "debian:cloud-amd64", "debian:amd64", "minimal" (ember images kernel --minimal) or a bzImage path`)
	fl.IntVar(&f.memory, "memory", 512, "guest RAM of every VM, MiB")
	fl.StringVar(&f.cmdline, "cmdline", "", "added to every VM's kernel command line (all VMMs alike)")
	fl.StringVar(&f.accel, "accel", "auto", "accelerator: auto, kvm or nested")
	fl.StringVar(&f.svg, "svg", "", "write a chart of the phases to this SVG file")
	fl.BoolVar(&f.json, "json", false, "print the report as JSON instead of a table")
	fl.BoolVar(&f.noContainers, "no-containers", false, "leave out crun and runc")
	fl.BoolVar(&f.noDocker, "no-docker", false, "leave out docker")
	fl.IntVar(&f.density, "density", 0, "instead of boot times: start this many idle VMs (128 MiB each) and containers at once, report host memory per instance and the time to start all")
	_ = cmd.RegisterFlagCompletionFunc("accel", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{"auto", "kvm", "nested"}, cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}

// newBenchInsideCmd runs a nested bench's plan on KVM: the ember inside
// the L1 guest of `ember bench` without /dev/kvm.
func newBenchInsideCmd(g *globals) *cobra.Command {
	var resultFile string
	cmd := &cobra.Command{
		Use:    "bench-inside PLAN.json",
		Short:  "Run a bench plan on KVM (used by ember bench under --accel nested)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := bench.Inside(cmd.Context(), args[0], os.Stderr)
			if err != nil {
				return err
			}
			if resultFile == "" {
				fmt.Println(string(b))
				return nil
			}
			return os.WriteFile(resultFile, b, 0o644)
		},
	}
	cmd.Flags().StringVar(&resultFile, "result-file", "", "write the results (JSON) to this file")
	return cmd
}
