// Package bench measures boot time and memory of ember side by side with
// other VMMs (QEMU's microvm and q35 machines) and container runtimes
// (crun, runc, Docker), every contender starting the same neutral root
// file system (images.NeutralInit prints a marker and ends) with the same
// kernel and command line for the VMs.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/images"
	"github.com/ember-vmm/ember/vmm/plan"
)

// Options describe one bench run on this host.
type Options struct {
	// Runs is how many measured runs each contender gets (after one
	// unmeasured warm-up run).
	Runs int
	// Kernel is the VMs' bzImage; KernelName is how the user named it.
	Kernel, KernelName string
	// EmberInitrd is ember's own image for Kernel: an extra ember row
	// running the workload under ember's init ("" leaves it out).
	EmberInitrd string
	// Neutral is the root file system every contender starts.
	Neutral *images.Neutral
	// Cmdline is the whole kernel command line every VM gets: ember's
	// platform part, then UserCmdline (what ember's --cmdline sets).
	Cmdline, UserCmdline string
	MemoryMiB            int
	// Self is the ember executable; CacheDir its cache.
	Self, CacheDir string
	// Where labels this host in the report: "host", or "L1" inside the
	// nested guest.
	Where string
	// VMs says KVM is usable here; Containers and Docker that those
	// contenders should be tried.
	VMs, Containers, Docker bool
	// Timeout bounds one run.
	Timeout time.Duration
	// Density, when positive, measures that many idle instances of each
	// contender at once instead of boot times.
	Density int
	// Progress, when set, hears about every run.
	Progress func(line string) `json:"-"`
}

// Stats summarize one measure over the runs, in milliseconds.
type Stats struct {
	Median float64 `json:"median"`
	P90    float64 `json:"p90"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Sample is one measured run.
type Sample struct {
	// ReadyMS is the time from starting the contender to the marker on
	// the host; ExitMS to the contender's exit.
	ReadyMS float64 `json:"ready_ms"`
	ExitMS  float64 `json:"exit_ms"`
	// RSSMiB is the contender process's resident memory when the marker
	// arrived (VMs: the VMM with the guest RAM it touched); PeakRSSMiB its
	// peak, from the kernel's accounting at exit.
	RSSMiB     float64 `json:"rss_mib,omitempty"`
	PeakRSSMiB float64 `json:"peak_rss_mib"`
	// OverheadMiB, PrivateMiB and AnonMiB are a VMM's resident memory
	// beyond the guest RAM mapping, and its private and anonymous parts
	// (plan.Memory), at the marker.
	OverheadMiB float64 `json:"overhead_mib,omitempty"`
	PrivateMiB  float64 `json:"overhead_private_mib,omitempty"`
	AnonMiB     float64 `json:"overhead_anon_mib,omitempty"`
	// Exits are ember's VM exits by reason, and Phases its timeline (from
	// its --json report).
	Exits  map[string]uint64 `json:"exits,omitempty"`
	Phases []Phase           `json:"phases,omitempty"`
}

// Phase is one step of ember's timeline (launch.Phase).
type Phase struct {
	Name  string  `json:"name"`
	MS    float64 `json:"ms"`
	Exits uint64  `json:"exits"`
}

// Result is one contender's outcome.
type Result struct {
	Name string `json:"name"`
	// Kind is "vm" or "container"; Where is the host it ran on.
	Kind  string `json:"kind"`
	Where string `json:"where"`
	// Init says which program started: "neutral" or "ember-init".
	Init string `json:"init"`
	// Command is the command line each run used.
	Command []string `json:"command,omitempty"`
	// Available is false when the contender cannot run here; Reason says
	// why.
	Available bool   `json:"available"`
	Reason    string `json:"reason,omitempty"`
	// Failed counts measured runs that did not print the marker or did
	// not end cleanly; they are not in the statistics.
	Failed int      `json:"failed,omitempty"`
	Ready  *Stats   `json:"ready_ms,omitempty"`
	Exit   *Stats   `json:"exit_ms,omitempty"`
	Runs   []Sample `json:"runs,omitempty"`
	Memory *Memory  `json:"memory,omitempty"`
	// Phases are ember's median timeline: each phase's median time and
	// exits over the runs.
	Phases []Phase `json:"phases,omitempty"`
}

// Memory is the median memory of a contender's runs, in MiB.
type Memory struct {
	RSS      float64 `json:"rss_mib,omitempty"`
	PeakRSS  float64 `json:"peak_rss_mib"`
	Overhead float64 `json:"overhead_mib,omitempty"`
	Private  float64 `json:"overhead_private_mib,omitempty"`
	Anon     float64 `json:"overhead_anon_mib,omitempty"`
}

// contender is one way of starting the neutral root file system.
type contender struct {
	name, kind, init string
	args             []string
	// guestRAM is a VM's RAM in bytes: the mapping left out of its
	// overhead.
	guestRAM uint64
	// unavailable, when set, is why the contender cannot run here.
	unavailable string
	// setup runs once before the warm-up (docker import).
	setup func(ctx context.Context) error
	ember bool
	// idle, for a container runtime, is how a density run starts instance
	// id of the idle program and stops it; nil runs args and stops the
	// process with SIGTERM.
	idle func(id string) (args []string, stop func())
}

// Microvm is QEMU's -M value for the microvm rows of every benchmark:
// microvm with its defaults (qboot, the small firmware a -kernel boot
// needs, and the DMA option ROM that loads the kernel fast) and an RTC.
// Its RTC is on by default only without KVM; without one, a stock
// kernel's rtc_cmos spends seconds under the emulator probing ports
// nothing answers. ember and q35 have an RTC, so microvm gets one too:
// the same devices for every VM.
const Microvm = "microvm,rtc=on"

// QEMUCPU is -cpu for every QEMU row and Go benchmark: the host's CPU,
// less what ember hides from its own guests when told to (GuestXSAVEEnv
// off, as in a nested L1: XSAVE and what only XSAVE manages; the guest
// kernel drops the AVX-512 and AMX features that depend on them), so every
// VM boots on the same CPU.
func QEMUCPU() string {
	if os.Getenv(proto.GuestXSAVEEnv) == "off" {
		return "host,-xsave,-xsavec,-xsaveopt,-xsaves,-avx,-avx2,-fma,-f16c,-avx512f,-pku"
	}
	return "host"
}

// QEMUArgs is the command line, without the program, that every QEMU row
// and Go benchmark starts from: machine under KVM on QEMUCPU, one vCPU and
// memMiB of RAM, no default devices, user config, display or reboot, the
// serial port on stdio, and the kernel, initrd and kernel command line.
// Callers append their devices.
func QEMUArgs(machine string, memMiB int, kernel, initrd, cmdline string) []string {
	return []string{"-M", machine, "-accel", "kvm", "-cpu", QEMUCPU(), "-m", strconv.Itoa(memMiB), "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
		"-kernel", kernel, "-initrd", initrd, "-append", cmdline}
}

// Contenders lists what Run would start here, in order.
func contenders(o Options) []*contender {
	var cs []*contender
	ram := uint64(o.MemoryMiB) << 20
	mem := strconv.Itoa(o.MemoryMiB)
	if o.VMs {
		// ember asks for huge pages as QEMU always does (it advises all
		// its guest RAM MADV_HUGEPAGE), so both boot on the same backing
		// whatever the host's THP policy.
		ember := func(initrd string, cmd ...string) []string {
			a := []string{o.Self, "run", "--accel", "kvm", "--cache-dir", o.CacheDir, "--kernel", o.Kernel,
				"--initrd", initrd, "--cpus", "1", "--memory", mem + "M", "--huge-pages", "--json", "--cmdline", o.UserCmdline}
			if len(cmd) > 0 {
				a = append(append(a, "--"), cmd...)
			}
			return a
		}
		cs = append(cs, &contender{name: "ember", kind: "vm", init: "neutral", args: ember(o.Neutral.Initrd), guestRAM: ram, ember: true})
		if o.EmberInitrd != "" {
			cs = append(cs, &contender{name: "ember (ember-init)", kind: "vm", init: "ember-init",
				args: ember(o.EmberInitrd, "echo", images.NeutralMarker), guestRAM: ram, ember: true})
		}
		qemu, err := exec.LookPath("qemu-system-x86_64")
		for _, m := range []struct{ name, machine string }{
			{"qemu-microvm", Microvm},
			// q35 boots through SeaBIOS, as a q35 user gets it.
			{"qemu-q35", "q35"},
		} {
			c := &contender{name: m.name, kind: "vm", init: "neutral", guestRAM: ram}
			if err != nil {
				c.unavailable = "qemu-system-x86_64 not found (Debian: qemu-system-x86)"
			} else {
				c.args = append([]string{qemu}, QEMUArgs(m.machine, o.MemoryMiB, o.Kernel, o.Neutral.Initrd, o.Cmdline)...)
			}
			cs = append(cs, c)
		}
	}
	if o.Containers {
		for _, rt := range []string{"crun", "runc"} {
			c := &contender{name: rt, kind: "container", init: "neutral"}
			p, err := exec.LookPath(rt)
			switch {
			case err != nil:
				c.unavailable = rt + " not found (Debian: " + rt + ")"
			case os.Geteuid() != 0:
				c.unavailable = rt + " needs root for this bundle"
			default:
				c.args = []string{p, "run", "--bundle", o.Neutral.Bundle, "ember-bench-" + o.Neutral.Key}
				c.idle = func(id string) ([]string, func()) {
					return []string{p, "run", "--bundle", o.Neutral.IdleBundle, id}, func() {
						_ = exec.Command(p, "kill", id, "KILL").Run()
						_ = exec.Command(p, "delete", "--force", id).Run()
					}
				}
			}
			cs = append(cs, c)
		}
	}
	if o.Docker {
		c := &contender{name: "docker", kind: "container", init: "neutral"}
		image := "ember-bench:" + o.Neutral.Key
		p, err := exec.LookPath("docker")
		if err != nil {
			c.unavailable = "docker not found"
		} else {
			c.args = []string{p, "run", "--rm", "--network", "none", image, "/init"}
			c.idle = func(id string) ([]string, func()) {
				return []string{p, "run", "--rm", "--name", id, "--network", "none", image, "/idle"},
					func() { _ = exec.Command(p, "rm", "--force", id).Run() }
			}
			c.setup = func(ctx context.Context) error {
				vctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				if out, err := exec.CommandContext(vctx, p, "version", "--format", "{{.Server.Version}}").Output(); err != nil || len(strings.TrimSpace(string(out))) == 0 {
					return errors.New("no Docker engine reachable here")
				}
				if exec.CommandContext(ctx, p, "image", "inspect", image).Run() == nil {
					return nil
				}
				out, err := exec.CommandContext(ctx, p, "import", o.Neutral.Tar, image).CombinedOutput()
				if err != nil {
					return fmt.Errorf("docker import: %v: %s", err, lastLine(string(out)))
				}
				return nil
			}
		}
		cs = append(cs, c)
	}
	for _, c := range cs {
		if len(c.args) == 0 && c.unavailable == "" {
			c.unavailable = "no command"
		}
	}
	return cs
}

// Run measures every contender: one warm-up run each (a contender whose
// warm-up fails twice is reported unavailable, with its error), then o.Runs
// rounds, each contender once per round so drift on a busy host spreads
// over all of them.
func Run(ctx context.Context, o Options) []Result {
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Minute
	}
	cs := contenders(o)
	res := make([]Result, len(cs))
	say := func(format string, a ...any) {
		if o.Progress != nil {
			o.Progress(fmt.Sprintf(format, a...))
		}
	}
	for i, c := range cs {
		res[i] = Result{Name: c.name, Kind: c.kind, Where: o.Where, Init: c.init, Command: c.args}
		if c.unavailable != "" {
			res[i].Reason = c.unavailable
			continue
		}
		if c.setup != nil {
			if err := c.setup(ctx); err != nil {
				res[i].Reason = err.Error()
				continue
			}
		}
		say("%s: warm-up run", c.name)
		_, err := once(ctx, c, o.Timeout)
		if err != nil && ctx.Err() == nil {
			// Once more, on a busy or emulated host, before giving up.
			say("%s: warm-up run failed (%v); once more", c.name, err)
			_, err = once(ctx, c, o.Timeout)
		}
		if err != nil {
			res[i].Reason = err.Error()
			continue
		}
		res[i].Available = true
	}
	for round := range o.Runs {
		for i, c := range cs {
			if !res[i].Available || ctx.Err() != nil {
				continue
			}
			r, err := once(ctx, c, o.Timeout)
			if err != nil {
				res[i].Failed++
				say("%s: run %d/%d failed: %v", c.name, round+1, o.Runs, err)
				continue
			}
			res[i].Runs = append(res[i].Runs, r)
			say("%s: run %d/%d: first output %.0f ms, exit %.0f ms", c.name, round+1, o.Runs, r.ReadyMS, r.ExitMS)
		}
	}
	for i := range res {
		summarize(&res[i])
	}
	return res
}

// summarize fills a result's statistics from its runs.
func summarize(r *Result) {
	if len(r.Runs) == 0 {
		if r.Available {
			r.Available, r.Reason = false, fmt.Sprintf("every measured run failed (%d)", r.Failed)
		}
		return
	}
	pick := func(f func(Sample) float64) []float64 {
		var v []float64
		for _, x := range r.Runs {
			v = append(v, f(x))
		}
		return v
	}
	r.Ready = Summarize(pick(func(x Sample) float64 { return x.ReadyMS }))
	r.Exit = Summarize(pick(func(x Sample) float64 { return x.ExitMS }))
	r.Phases = medianPhases(r.Runs)
	r.Memory = &Memory{
		RSS:      Summarize(pick(func(x Sample) float64 { return x.RSSMiB })).Median,
		PeakRSS:  Summarize(pick(func(x Sample) float64 { return x.PeakRSSMiB })).Median,
		Overhead: Summarize(pick(func(x Sample) float64 { return x.OverheadMiB })).Median,
		Private:  Summarize(pick(func(x Sample) float64 { return x.PrivateMiB })).Median,
		Anon:     Summarize(pick(func(x Sample) float64 { return x.AnonMiB })).Median,
	}
}

// medianPhases is the median time and exits of each phase over the runs,
// in the first run's order.
func medianPhases(runs []Sample) []Phase {
	if len(runs) == 0 {
		return nil
	}
	var out []Phase
	for _, p := range runs[0].Phases {
		var t, e []float64
		for _, r := range runs {
			for _, q := range r.Phases {
				if q.Name == p.Name {
					t, e = append(t, q.MS), append(e, float64(q.Exits))
				}
			}
		}
		out = append(out, Phase{Name: p.Name, MS: Summarize(t).Median, Exits: uint64(Summarize(e).Median)})
	}
	return out
}

// Summarize is the median, 90th percentile (nearest rank), minimum and
// maximum of v; nil for no values.
func Summarize(v []float64) *Stats {
	if len(v) == 0 {
		return nil
	}
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	rank := (len(s)*90 + 99) / 100 // ceil(0.9 n)
	return &Stats{Median: med, P90: s[max(rank, 1)-1], Min: s[0], Max: s[len(s)-1]}
}

// once starts c, waits for the marker on its stdout or stderr and for its
// exit, and measures.
func once(ctx context.Context, c *contender, limit time.Duration) (Sample, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.args[0], c.args[1:]...)
	cmd.WaitDelay = 5 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return Sample{}, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return Sample{}, err
	}
	var r Sample
	var mu sync.Mutex
	var tail []string
	var report strings.Builder
	seen := make(chan struct{})
	var seenOnce sync.Once
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Sample{}, err
	}
	scan := func(rd io.Reader, isStdout bool) {
		sc := bufio.NewScanner(rd)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if isMarker(line) {
				seenOnce.Do(func() {
					r.ReadyMS = ms(time.Since(start))
					// Sampled while the contender still runs: the VM is
					// about to power off, the container to exit.
					var guest plan.GuestFunc
					if c.guestRAM > 0 {
						guest = plan.GuestBySize(c.guestRAM)
					}
					m, _ := plan.ReadMemory(fmt.Sprintf("/proc/%d/smaps", cmd.Process.Pid), guest)
					r.RSSMiB, r.OverheadMiB, r.PrivateMiB, r.AnonMiB = m.RSS, m.Overhead, m.Private, m.Anon
					close(seen)
				})
			}
			mu.Lock()
			if c.ember && isStdout {
				report.WriteString(line)
				report.WriteByte('\n')
			}
			tail = append(tail[max(0, len(tail)-9):], line)
			mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, rd)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); scan(stdout, true) }()
	go func() { defer wg.Done(); scan(stderr, false) }()
	wg.Wait()
	err = cmd.Wait()
	r.ExitMS = ms(time.Since(start))
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.PeakRSSMiB = float64(ru.Maxrss) / 1024
	}
	mu.Lock()
	defer mu.Unlock()
	select {
	case <-seen:
	default:
		if ctx.Err() != nil {
			return r, fmt.Errorf("no marker within %s: %s", limit, lastLines(tail))
		}
		return r, fmt.Errorf("ended without the marker (%v): %s", err, lastLines(tail))
	}
	if err != nil {
		return r, fmt.Errorf("%v: %s", err, lastLines(tail))
	}
	if c.ember {
		r.Exits, r.Phases = emberReport(report.String())
	}
	return r, nil
}

// emberReport reads the exit counts and phases of ember's --json report
// in out.
func emberReport(out string) (map[string]uint64, []Phase) {
	i := strings.Index(out, "{\n")
	if i < 0 {
		return nil, nil
	}
	var rep struct {
		Exits  map[string]uint64 `json:"exits"`
		Phases []Phase           `json:"phases"`
	}
	if json.Unmarshal([]byte(out[i:]), &rep) != nil {
		return nil, nil
	}
	return rep.Exits, rep.Phases
}

// isMarker: the line is the marker alone, as a VMM's serial console
// (CR LF, ember's "console: " prefix) or a container's stdout gives it.
func isMarker(line string) bool {
	return strings.TrimSpace(strings.TrimPrefix(line, "console: ")) == images.NeutralMarker
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func lastLines(lines []string) string {
	if len(lines) == 0 {
		return "no output"
	}
	return strings.Join(lines[max(0, len(lines)-3):], " | ")
}

// ErrNoContender: nothing could run.
var ErrNoContender = errors.New("no contender could run")
