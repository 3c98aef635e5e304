package tests

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ember-vmm/ember/configs"
	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/vmm/bench"
	"github.com/ember-vmm/ember/vmm/platform"
)

const readyMarker = "EMBER-BENCH-READY"

// timeToMarker starts cmd and returns how long until readyMarker appears on
// its stdout, how long until it exits, and its peak RSS in KiB (guest RAM
// the guest touched included, for both VMMs alike).
func timeToMarker(b *testing.B, cmd *exec.Cmd) (ready, total time.Duration, rssKiB int64) {
	b.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	var tail []string
	for sc.Scan() {
		if ready == 0 && strings.Contains(sc.Text(), readyMarker) {
			ready = time.Since(start)
		}
		tail = append(tail, sc.Text())
	}
	err = cmd.Wait()
	total = time.Since(start)
	if ready == 0 || err != nil {
		b.Fatalf("%s: ready=%v err=%v\nstdout tail: %s\nstderr: %s", cmd.Path, ready, err,
			strings.Join(tail[max(0, len(tail)-20):], "\n"), errb.String())
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rssKiB = ru.Maxrss
	}
	return ready, total, rssKiB
}

// BenchmarkVMBootToInit compares ember with QEMU's microvm machine booting
// the same kernel and initramfs to the same guest command on the same KVM:
// the time until the guest's first line of output and until the VMM exits.
func BenchmarkVMBootToInit(b *testing.B) {
	if !env.direct {
		b.Skip("runs where KVM is usable (inside the nested L1 guest here)")
	}
	img := image(b, "cloud-amd64")
	qemu, qerr := exec.LookPath("qemu-system-x86_64")

	// QEMU gets ember's initramfs with the same run file appended.
	run, err := proto.Archive(proto.Run{Args: []string{"sh", "-c", "echo " + readyMarker + "; poweroff"}})
	if err != nil {
		b.Fatal(err)
	}
	base, err := os.ReadFile(img.Initramfs)
	if err != nil {
		b.Fatal(err)
	}
	for len(base)%4 != 0 {
		base = append(base, 0)
	}
	initrd := filepath.Join(b.TempDir(), "initrd")
	if err := os.WriteFile(initrd, append(base, run...), 0o644); err != nil {
		b.Fatal(err)
	}
	var emberReady, emberTotal, qemuReady, qemuTotal time.Duration
	var emberRSS, qemuRSS int64
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		r, t, rss := timeToMarker(b, exec.CommandContext(ctx, env.ember, "run", "--accel", "kvm", "--cache-dir", env.cacheDir,
			"--", "sh", "-c", "echo "+readyMarker+"; poweroff"))
		emberReady, emberTotal, emberRSS = emberReady+r, emberTotal+t, max(emberRSS, rss)
		if qerr == nil {
			r, t, rss = timeToMarker(b, exec.CommandContext(ctx, qemu, bench.QEMUArgs(bench.Microvm, 512, img.Kernel, initrd,
				platform.New().Cmdline()+" "+configs.Default().Boot.Cmdline)...))
			qemuReady, qemuTotal, qemuRSS = qemuReady+r, qemuTotal+t, max(qemuRSS, rss)
		}
		cancel()
	}
	n := float64(b.N)
	b.ReportMetric(float64(emberReady.Milliseconds())/n, "ember-ready-ms")
	b.ReportMetric(float64(emberTotal.Milliseconds())/n, "ember-total-ms")
	b.ReportMetric(float64(emberRSS)/1024, "ember-peak-rss-MiB")
	if qerr != nil {
		b.Logf("QEMU not found (%v): no comparison", qerr)
		return
	}
	b.ReportMetric(float64(qemuReady.Milliseconds())/n, "qemu-microvm-ready-ms")
	b.ReportMetric(float64(qemuTotal.Milliseconds())/n, "qemu-microvm-total-ms")
	b.ReportMetric(float64(qemuRSS)/1024, "qemu-microvm-peak-rss-MiB")
	b.ReportMetric(float64(emberReady)/float64(qemuReady), "ready-ratio-ember/qemu")
}
