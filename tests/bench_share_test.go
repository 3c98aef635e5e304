package tests

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ember-vmm/ember/configs"
	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/vmm/bench"
	"github.com/ember-vmm/ember/vmm/platform"
)

// Share benchmark sizes: EMBER_BENCH_SHARE_FILES small files and a file of
// EMBER_BENCH_SHARE_MIB MiB (10,000 and 1024 by default).
func shareBenchSizes() (files, mib int) {
	files, mib = 10000, 1024
	if v, err := strconv.Atoi(os.Getenv("EMBER_BENCH_SHARE_FILES")); err == nil && v > 0 {
		files = v
	}
	if v, err := strconv.Atoi(os.Getenv("EMBER_BENCH_SHARE_MIB")); err == nil && v > 0 {
		mib = v
	}
	return files, mib
}

// BenchmarkVMShares: the same guest program (sharecheck -bench) writes and
// reads small files and one big file through a host directory share:
// ember's virtio-fs, ember's virtio-9p and QEMU's 9p (-virtfs on microvm),
// each on Debian's generic kernel (the cloud kernel has no 9p) with the
// same initramfs and command line, one after another in one host. ember's
// contenders go first: QEMU's 9p big read has taken the emulated host down
// (README, known issues), and a crash loses only what was not yet run.
func BenchmarkVMShares(b *testing.B) {
	qemu := benchQEMU(b)
	files, mib := shareBenchSizes()
	img := image(b, "amd64")
	args := []string{"sharecheck", "-bench", "/mnt/share", strconv.Itoa(files), strconv.Itoa(mib)}
	// QEMU boots the same image; its run (the command and the 9p mount)
	// is in an archive appended to it, as ember would send it.
	run, err := proto.Archive(proto.Run{Args: args, Shares: []proto.Share{{Tag: "share0", Path: "/mnt/share", NineP: true}}})
	if err != nil {
		b.Fatal(err)
	}
	progs := map[string]string{"sharecheck": env.sharecheck}
	emberInitrd, qemuInitrd := initrdFor(b, "amd64", progs, nil), initrdFor(b, "amd64", progs, run)
	type contender struct {
		name string
		cmd  func(ctx context.Context, dir string) *exec.Cmd
	}
	ember := func(share string) func(ctx context.Context, dir string) *exec.Cmd {
		return func(ctx context.Context, dir string) *exec.Cmd {
			return exec.CommandContext(ctx, env.ember, append([]string{"run", "--accel", "kvm", "--cache-dir", env.cacheDir,
				"--kernel", "debian:amd64", "--initrd", emberInitrd, "--share", dir + ":/mnt/share" + share, "--"}, args...)...)
		}
	}
	contenders := []contender{
		{"ember-virtiofs", ember("")},
		{"ember-9p", ember(",9p")},
		{"qemu-9p", func(ctx context.Context, dir string) *exec.Cmd {
			return exec.CommandContext(ctx, qemu, append(bench.QEMUArgs(bench.Microvm, 512, img.Kernel, qemuInitrd,
				platform.New().Cmdline()+" "+configs.Default().Boot.Cmdline),
				"-fsdev", "local,id=f0,path="+dir+",security_model=none",
				"-device", "virtio-9p-device,fsdev=f0,mount_tag=share0")...)
		}},
	}
	// EMBER_BENCH_SHARE_ONLY names the contenders to run (comma-separated).
	if only := os.Getenv("EMBER_BENCH_SHARE_ONLY"); only != "" {
		names := strings.Split(only, ",")
		contenders = slices.DeleteFunc(contenders, func(c contender) bool { return !slices.Contains(names, c.name) })
	}
	results := map[string]map[string][]float64{}
	for b.Loop() {
		for _, c := range contenders {
			var phases map[string]float64
			var err error
			// Once more after a crash of the emulated guest (README, known
			// issues), saying so.
			for try := 0; try < 2; try++ {
				// QEMU's 9p needs about 24 minutes for the default sizes
				// in a nested L1 (its big read runs at 2–4 MiB/s).
				ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
				phases, err = runShareBench(c.name, c.cmd(ctx, b.TempDir()))
				cancel()
				if err == nil || !strings.Contains(err.Error(), "triple-faulted") {
					break
				}
				b.Logf("RETRY: %s: %v", c.name, err)
			}
			if err != nil {
				// The others still run: which contenders crash is part
				// of the answer.
				b.Errorf("%s: %v", c.name, err)
				continue
			}
			if results[c.name] == nil {
				results[c.name] = map[string][]float64{}
			}
			for p, s := range phases {
				results[c.name][p] = append(results[c.name][p], s)
			}
		}
	}
	amount := map[string]float64{"small-write": float64(files), "small-read": float64(files), "big-write": float64(mib), "big-read": float64(mib)}
	unit := map[string]string{"small-write": "files/s", "small-read": "files/s", "big-write": "MiB/s", "big-read": "MiB/s"}
	for _, p := range []string{"small-write", "small-read", "big-write", "big-read"} {
		line := fmt.Sprintf("share bench %-11s", p)
		rate := map[string]float64{}
		for _, c := range contenders {
			ss := slices.Clone(results[c.name][p])
			if len(ss) == 0 {
				continue
			}
			slices.Sort(ss)
			rate[c.name] = amount[p] / ss[len(ss)/2]
			b.ReportMetric(rate[c.name], c.name+"-"+p+"-"+unit[p])
			line += fmt.Sprintf("  %s %.0f %s", c.name, rate[c.name], unit[p])
		}
		if rate["ember-virtiofs"] > 0 && rate["qemu-9p"] > 0 {
			b.ReportMetric(rate["ember-virtiofs"]/rate["qemu-9p"], "ratio-virtiofs/qemu9p-"+p)
		}
		fmt.Fprintln(os.Stderr, line)
	}
}

// runShareBench runs cmd and returns the seconds of each "bench PHASE
// SECONDS" line its guest printed.
func runShareBench(name string, cmd *exec.Cmd) (map[string]float64, error) {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	phases := map[string]float64{}
	var tail []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		l := strings.TrimSpace(strings.TrimPrefix(sc.Text(), "console: "))
		tail = append(tail[max(0, len(tail)-20):], l)
		if f := strings.Fields(l); len(f) == 3 && f[0] == "bench" {
			if s, err := strconv.ParseFloat(f[2], 64); err == nil {
				phases[f[1]] = s
				// As it comes: a run can take many minutes.
				fmt.Fprintf(os.Stderr, "share bench: %s %s %.1f s\n", name, f[1], s)
			}
		}
	}
	_, _ = io.Copy(io.Discard, out)
	err = cmd.Wait()
	if len(phases) != 4 {
		return nil, fmt.Errorf("%d of 4 phases measured (%v)\noutput:\n%s\nstderr:\n%s", len(phases), err, strings.Join(tail, "\n"), stderr.String())
	}
	return phases, nil
}
