package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DensityMemoryMiB is the guest RAM of each idle VM of a density run.
const DensityMemoryMiB = 128

// DensityResult is how N idle instances of one contender fit on a host.
type DensityResult struct {
	Name      string `json:"name"`
	Kind      string `json:"kind"`
	Where     string `json:"where"`
	N         int    `json:"n"`
	Available bool   `json:"available"`
	Reason    string `json:"reason,omitempty"`
	// StartAllMS is from starting the first instance to the last one's
	// marker (all are started at once).
	StartAllMS float64 `json:"start_all_ms"`
	// HostMiB is the host memory each instance costs: the drop of the
	// host's MemAvailable with all N up, divided by N. It counts what the
	// kernel spends too (page tables, a container's cgroup, a VM's guest
	// memory the guest touched), and whatever else the host did meanwhile.
	HostMiB float64 `json:"host_mib_per_instance"`
	// PSSMiB is the proportional set size of each instance's process (the
	// VMM; the runtime or client that waits for a container), per instance.
	PSSMiB float64 `json:"pss_mib_per_instance"`
}

// instance is one running idle VM or container.
type instance struct {
	cmd  *exec.Cmd
	seen chan struct{}
	stop func()
	done chan error
	mu   sync.Mutex
	tail []string // its last lines of output, for errors
}

func (in *instance) lastLines() string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return lastLines(in.tail)
}

// densityContenders are the idle variants of the boot contenders.
func densityContenders(o Options) []*contender {
	var cs []*contender
	if o.VMs {
		args := []string{o.Self, "run", "--accel", "kvm",
			"--cache-dir", o.CacheDir, "--kernel", o.Kernel, "--initrd", o.Neutral.Initrd, "--cpus", "1",
			"--memory", strconv.Itoa(DensityMemoryMiB) + "M", "--cmdline", strings.TrimSpace(o.UserCmdline + " rdinit=/idle")}
		// Guest RAM as the host's THP policy says (the default), and in
		// huge pages, where a touched byte costs 2 MiB.
		cs = append(cs, &contender{name: "ember", kind: "vm", args: args},
			&contender{name: "ember (huge pages)", kind: "vm", args: append(args[:len(args):len(args)], "--huge-pages")})
	}
	return append(cs, contenders(Options{Containers: o.Containers, Docker: o.Docker, Neutral: o.Neutral})...)
}

// Density starts o.Density idle instances of each contender at once,
// measures them with all up, and stops them.
func Density(ctx context.Context, o Options) []DensityResult {
	var out []DensityResult
	for _, c := range densityContenders(o) {
		r := DensityResult{Name: c.name, Kind: c.kind, Where: o.Where, N: o.Density}
		if c.unavailable == "" && c.setup != nil {
			if err := c.setup(ctx); err != nil {
				c.unavailable = err.Error()
			}
		}
		if c.unavailable != "" {
			r.Reason = c.unavailable
			out = append(out, r)
			continue
		}
		if o.Progress != nil {
			o.Progress(fmt.Sprintf("density: starting %d idle %s instances", o.Density, c.name))
		}
		if err := densityOnce(ctx, o, c, &r); err != nil {
			r.Reason = err.Error()
		} else {
			r.Available = true
			if o.Progress != nil {
				o.Progress(fmt.Sprintf("density: %s: all %d up in %.0f ms, %.1f MiB of host memory each", c.name, r.N, r.StartAllMS, r.HostMiB))
			}
		}
		out = append(out, r)
	}
	return out
}

func densityOnce(ctx context.Context, o Options, c *contender, r *DensityResult) error {
	limit := o.Timeout
	if limit == 0 {
		limit = 5 * time.Minute
	}
	before := memAvailableKiB()
	var insts []*instance
	defer func() {
		// Stop them all at once, then wait for each (bounded).
		for _, in := range insts {
			in.stop()
		}
		for _, in := range insts {
			select {
			case <-in.done:
			case <-time.After(30 * time.Second):
				_ = in.cmd.Process.Kill()
				<-in.done
			}
		}
	}()
	start := time.Now()
	for i := range o.Density {
		in, err := startIdle(c, o, i)
		if err != nil {
			return err
		}
		insts = append(insts, in)
	}
	deadline := time.After(limit)
	for _, in := range insts {
		select {
		case <-in.seen:
		case err := <-in.done:
			in.done <- err
			return fmt.Errorf("an instance ended before its marker (%v): %s", err, in.lastLines())
		case <-deadline:
			return fmt.Errorf("not all %d instances were up within %s", o.Density, limit)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.StartAllMS = ms(time.Since(start))
	// Let the guests and containers settle before the host is measured.
	time.Sleep(2 * time.Second)
	after := memAvailableKiB()
	if before > after {
		r.HostMiB = float64(before-after) / 1024 / float64(o.Density)
	}
	var pss uint64
	for _, in := range insts {
		pss += pssKiB(in.cmd.Process.Pid)
	}
	r.PSSMiB = float64(pss) / 1024 / float64(o.Density)
	return nil
}

// startIdle starts instance i of c running the idle program.
func startIdle(c *contender, o Options, i int) (*instance, error) {
	args := c.args
	var stop func()
	if c.idle != nil {
		args, stop = c.idle(fmt.Sprintf("ember-density-%s-%d", o.Neutral.Key, i))
	}
	cmd := exec.Command(args[0], args[1:]...)
	if stop == nil {
		stop = func() { _ = cmd.Process.Signal(syscall.SIGTERM) }
	}
	outR, outW := io.Pipe()
	cmd.Stdout, cmd.Stderr = outW, outW
	in := &instance{cmd: cmd, seen: make(chan struct{}), done: make(chan error, 1), stop: stop}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var once sync.Once
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			if isMarker(sc.Text()) {
				once.Do(func() { close(in.seen) })
			}
			in.mu.Lock()
			in.tail = append(in.tail[max(0, len(in.tail)-9):], sc.Text())
			in.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, outR)
	}()
	go func() {
		err := cmd.Wait()
		outW.Close()
		in.done <- err
	}()
	return in, nil
}

// memAvailableKiB is the host's MemAvailable.
func memAvailableKiB() uint64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	return meminfoField(b, "MemAvailable:")
}

func meminfoField(b []byte, name string) uint64 {
	for _, l := range bytes.Split(b, []byte("\n")) {
		f := strings.Fields(string(l))
		if len(f) >= 2 && f[0] == name {
			v, _ := strconv.ParseUint(f[1], 10, 64)
			return v
		}
	}
	return 0
}

// pssKiB is a process's proportional set size.
func pssKiB(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	return meminfoField(b, "Pss:")
}
