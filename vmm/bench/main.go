package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ember-vmm/ember/configs"
	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/images"
	"github.com/ember-vmm/ember/vmm/launch"
	"github.com/ember-vmm/ember/vmm/platform"
)

// Config is what the user asked of ember bench.
type Config struct {
	Runs int
	// Kernel is a debian:<flavour> name or a bzImage path.
	Kernel    string
	MemoryMiB int
	// Accel is auto, kvm or nested.
	Accel    string
	CacheDir string
	// Containers and Docker turn those contenders on.
	Containers, Docker bool
	// Density, when positive, measures that many idle instances of each
	// contender at once instead of boot times.
	Density int
	// Cmdline is added to every VM's kernel command line.
	Cmdline string
	Log     *slog.Logger
	// Stderr gets progress and the nested guest's console.
	Stderr io.Writer
}

// planFile is the inner bench's options in the nested IO share.
const planFile = "bench-plan.json"

// Main runs the whole comparison: on KVM everything here; without it,
// the VMs and the containers inside one nested L1 guest (the same CPU and
// kernel for all), and the containers once more on this host, labelled
// apart.
func Main(ctx context.Context, c Config) (*Report, error) {
	start := time.Now()
	if c.Runs < 1 {
		return nil, fmt.Errorf("--runs %d: expected at least 1", c.Runs)
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	lo := launch.Options{Stderr: c.Stderr, Log: c.Log, Progress: c.Stderr, CacheDir: c.CacheDir}
	var err error
	cache := &images.Cache{Dir: c.CacheDir, Log: c.Log, Progress: c.Stderr}
	user := strings.TrimSpace(configs.Default().Boot.Cmdline + " " + c.Cmdline)
	o := Options{Runs: c.Runs, KernelName: c.Kernel, MemoryMiB: c.MemoryMiB, CacheDir: c.CacheDir, Density: c.Density,
		Cmdline: platform.New().Cmdline() + " " + user, UserCmdline: user, Timeout: 5 * time.Minute}
	if o.Self, err = os.Executable(); err != nil {
		return nil, err
	}
	if flavour, ok := strings.CutPrefix(c.Kernel, "debian:"); ok || c.Kernel == images.MinimalName {
		var k *images.Kernel
		if ok {
			if k, err = cache.Kernel(ctx, flavour); err != nil {
				return nil, err
			}
			o.Kernel = k.Path
		} else if o.Kernel, err = cache.MinimalKernel(); err != nil {
			return nil, err
		}
		ib, err := launch.InitBinary("")
		if err != nil {
			return nil, err
		}
		if o.EmberInitrd, err = cache.Initramfs(ctx, k, ib); err != nil {
			return nil, err
		}
	} else {
		if o.Kernel, err = filepath.Abs(c.Kernel); err != nil {
			return nil, err
		}
		if _, err := os.Stat(o.Kernel); err != nil {
			return nil, fmt.Errorf("--kernel: %w", err)
		}
	}
	if o.Neutral, err = cache.NeutralRootfs(); err != nil {
		return nil, err
	}
	// After the inputs are checked: a bad one is one line, with no notice
	// about the accelerator before it.
	accel, err := launch.PickAccel(c.Accel, lo)
	if err != nil {
		return nil, err
	}
	rep := &Report{Accel: accel, Kernel: c.Kernel, Cmdline: o.Cmdline, MemoryMiB: c.MemoryMiB, Runs: c.Runs}
	say := func(line string) { fmt.Fprintf(c.Stderr, "bench: %s\n", line) }
	if accel == launch.AccelKVM {
		o.Where, o.VMs, o.Containers, o.Docker, o.Progress = "host", true, c.Containers, c.Docker, say
		rep.Results, rep.Density = runHere(ctx, o)
	} else {
		plan := o
		plan.Where, plan.VMs, plan.Containers, plan.Docker = "L1", true, c.Containers, c.Docker
		b, err := json.Marshal(plan)
		if err != nil {
			return nil, err
		}
		say("VMs and containers run inside one nested L1 guest (QEMU/TCG with nested KVM)")
		guests := uint64(c.MemoryMiB) << 20
		if c.Density > 0 {
			guests = uint64(c.Density*DensityMemoryMiB) << 20
		}
		res, err := launch.InL1(ctx, cache, lo, launch.L1Run{
			Args:  []string{"bench-inside", filepath.Join(proto.IOMount, planFile)},
			Files: []string{c.CacheDir, o.Kernel}, IOFiles: map[string][]byte{planFile: b},
			MemoryMiB: launch.L1MemoryMiB(guests),
		})
		if err != nil {
			return nil, err
		}
		if len(res.ResultJSON) == 0 {
			return nil, fmt.Errorf("nested: the ember bench inside L1 ended (status %d) without results", res.ExitStatus)
		}
		var in innerResults
		if err := json.Unmarshal(res.ResultJSON, &in); err != nil {
			return nil, fmt.Errorf("nested: results from L1: %w", err)
		}
		rep.Results, rep.Density = in.Results, in.Density
		rep.L1BootMS = ms(res.L1Boot)
		rep.Notes = append(rep.Notes, "rows marked L1 ran inside one nested L1 guest (software-emulated CPU with nested KVM): absolute times are slowed many times over; compare ratios between L1 rows")
		if c.Containers || c.Docker {
			say("containers on this host, for reference (not comparable with the L1 rows)")
			host := o
			host.Where, host.VMs, host.Containers, host.Docker, host.Progress = "host", false, c.Containers, c.Docker, say
			r, d := runHere(ctx, host)
			rep.Results, rep.Density = append(rep.Results, r...), append(rep.Density, d...)
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// runHere runs the boot comparison, or the density measurement when
// o.Density is set, on this host.
func runHere(ctx context.Context, o Options) ([]Result, []DensityResult) {
	if o.Density > 0 {
		return nil, Density(ctx, o)
	}
	return Run(ctx, o), nil
}

// innerResults is what the bench inside L1 returns.
type innerResults struct {
	Results []Result        `json:"results,omitempty"`
	Density []DensityResult `json:"density,omitempty"`
}

// Inside runs the plan of a nested bench (the ember inside L1) and
// returns its results as JSON.
func Inside(ctx context.Context, planPath string, stderr io.Writer) ([]byte, error) {
	b, err := os.ReadFile(planPath)
	if err != nil {
		return nil, err
	}
	var o Options
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("%s: %w", planPath, err)
	}
	o.Progress = func(line string) { fmt.Fprintf(stderr, "bench (L1): %s\n", line) }
	var in innerResults
	in.Results, in.Density = runHere(ctx, o)
	return json.Marshal(in)
}
