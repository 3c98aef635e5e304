package tests

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ember-vmm/ember/configs"
	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/vmm/bench"
	"github.com/ember-vmm/ember/vmm/platform"
)

// devBench is what one VMM run of the device benchmark measured.
type devBench struct {
	io       map[string][3]float64 // pattern → bytes, ops, seconds
	netBytes int64
	netSecs  float64
	exits    map[string]uint64 // KVM's exit counters over the workload
}

const benchNetBytes = 64 << 20

// kvmStats reads KVM's VM-wide exit counters (debugfs): the same meter
// for every VMM, read while its VM is alive.
func kvmStats() map[string]uint64 {
	out := map[string]uint64{}
	for _, n := range []string{"exits", "io_exits", "mmio_exits", "irq_exits", "halt_exits"} {
		b, err := os.ReadFile("/sys/kernel/debug/kvm/" + n)
		if err != nil {
			continue
		}
		v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		out[n] = v
	}
	return out
}

// runDevBench runs cmd (a VMM whose guest runs the benchmark script) and
// collects the guest's ioperf lines, the network transfer's time and the
// exits between the guest's start and end marks. The guest sends to addr,
// where a listener lives as long as this run.
func runDevBench(cmd *exec.Cmd, addr string) (devBench, error) {
	r := devBench{io: map[string][3]float64{}, exits: map[string]uint64{}}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return r, err
	}
	defer ln.Close()
	type transfer struct {
		n    int64
		secs float64
		err  error
	}
	netDone := make(chan transfer, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			netDone <- transfer{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(4 * time.Minute))
		start := time.Now()
		n, err := io.Copy(io.Discard, io.LimitReader(c, benchNetBytes))
		netDone <- transfer{n, time.Since(start).Seconds(), err}
	}()
	out, err := cmd.StdoutPipe()
	if err != nil {
		return r, err
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		return r, err
	}
	var before map[string]uint64
	var tail []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		tail = append(tail, line)
		switch f := strings.Fields(line); {
		case strings.Contains(line, "BENCH-START"):
			before = kvmStats()
		case strings.Contains(line, "BENCH-END"):
			for k, v := range kvmStats() {
				r.exits[k] = v - before[k]
			}
		case len(f) == 5 && f[0] == "ioperf":
			bytes, _ := strconv.ParseFloat(f[2], 64)
			ops, _ := strconv.ParseFloat(f[3], 64)
			ns, _ := strconv.ParseFloat(f[4], 64)
			r.io[f[1]] = [3]float64{bytes, ops, ns / 1e9}
		}
	}
	werr := cmd.Wait()
	if werr != nil || len(r.io) != 4 || len(r.exits) == 0 {
		return r, fmt.Errorf("%v; %d ioperf results, exits %v\nstdout tail:\n%s\nstderr:\n%s", werr, len(r.io), r.exits,
			strings.Join(tail[max(0, len(tail)-15):], "\n"), errb.String())
	}
	_ = ln.Close()
	t := <-netDone
	if r.netBytes, r.netSecs = t.n, t.secs; t.err != nil || t.n != benchNetBytes {
		return r, fmt.Errorf("network transfer: %d bytes, %v", t.n, t.err)
	}
	return r, nil
}

// benchQEMU is the QEMU that device benchmarks compare ember with; they
// run where KVM is usable.
func benchQEMU(b *testing.B) string {
	b.Helper()
	if !env.direct {
		b.Skip("runs where KVM is usable (inside the nested L1 guest here)")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		b.Skipf("SKIP: no QEMU to compare with: %v", err)
	}
	return qemu
}

// BenchmarkVMDevices compares ember's virtio-blk and virtio-net with QEMU
// microvm's (virtio-mmio, userspace virtio-net without vhost) on the same
// kernel, initramfs, command line, guest program, disk image and tap: disk
// throughput and IOPS with direct I/O, TCP throughput from guest to host,
// and VM exits per MiB moved.
func BenchmarkVMDevices(b *testing.B) {
	qemu := benchQEMU(b)
	if _, err := os.Stat("/sys/kernel/debug/kvm"); err != nil {
		_ = unix.Mount("debugfs", "/sys/kernel/debug", "debugfs", 0, "")
	}
	br := hostBridge(b, "embr-bench", "10.0.3.1/24")
	// One persistent tap on the bridge, which each VMM attaches to.
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "embtap-bench"},
		Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR}
	_ = netlink.LinkDel(tap)
	if err := netlink.LinkAdd(tap); err != nil {
		b.Fatalf("tap: %v", err)
	}
	defer netlink.LinkDel(tap)
	_ = netlink.LinkSetMaster(tap, br)
	_ = netlink.LinkSetUp(tap)

	script := "ip addr add 10.0.3.2/24 dev eth0 && ip link set eth0 up && echo BENCH-START && ioperf /dev/vda 128 && " +
		"dd if=/dev/zero bs=1M count=64 2>/dev/null | netcat 10.0.3.1:9100; echo BENCH-END; sleep 1; poweroff"
	run, err := proto.Archive(proto.Run{Args: []string{"sh", "-c", script}})
	if err != nil {
		b.Fatal(err)
	}
	progs := map[string]string{"ioperf": env.ioperf}
	emberInitrd, qemuInitrd := initrdWith(b, progs, nil), initrdWith(b, progs, run)
	img := image(b, "cloud-amd64")
	disk := filepath.Join(b.TempDir(), "disk.img")
	// Written out, not sparse: otherwise whichever contender runs first
	// pays for allocating the image's blocks on the host.
	if err := os.WriteFile(disk, make([]byte, 256<<20), 0o644); err != nil {
		b.Fatal(err)
	}
	const mac = "06:00:0a:00:03:02"
	var runs = map[string][]devBench{}
	consoleLog := filepath.Join(b.TempDir(), "console.log")
	failed := 0
	measure := func(who string, cmd func(ctx context.Context) *exec.Cmd) {
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		r, err := runDevBench(cmd(ctx), "10.0.3.1:9100")
		if err != nil {
			// The others still run: which contenders fail is part of
			// the answer.
			failed++
			b.Logf("FAILED: %s: %v\nguest console tail:\n%s\nhost kernel log tail:\n%s", who, err, tail(consoleLog, 40), kmsgTail(30))
			return
		}
		runs[who] = append(runs[who], r)
		line := "device run: " + who
		for _, p := range []string{"seqwrite", "seqread", "randwrite", "randread"} {
			v := r.io[p]
			line += fmt.Sprintf(" %s %.1f MB/s %.0f IOPS", p, v[0]/v[2]/1e6, v[1]/v[2])
		}
		// As it comes: the whole benchmark takes many minutes.
		fmt.Fprintf(os.Stderr, "%s, net %.2f MB/s, %d exits\n", line, float64(r.netBytes)/r.netSecs/1e6, r.exits["exits"])
	}
	ember := func(extra ...string) func(ctx context.Context) *exec.Cmd {
		return func(ctx context.Context) *exec.Cmd {
			args := append([]string{"run", "--accel", "kvm", "--cache-dir", env.cacheDir, "--initrd", emberInitrd,
				"--console-log", consoleLog, "--drive", "path=" + disk, "--net", "tap=embtap-bench,mac=" + mac}, extra...)
			return exec.CommandContext(ctx, env.ember, append(args, "--", "sh", "-c", script)...)
		}
	}
	for b.Loop() {
		// ember twice: with its default (4 KiB pages in L1, whose THP
		// policy is madvise), and with huge pages, which QEMU asks for.
		measure("ember", ember())
		measure("ember-huge", ember("--huge-pages"))
		measure("qemu", func(ctx context.Context) *exec.Cmd {
			return exec.CommandContext(ctx, qemu, append(bench.QEMUArgs(bench.Microvm, 512, img.Kernel, qemuInitrd,
				platform.New().Cmdline()+" "+configs.Default().Boot.Cmdline),
				"-drive", "id=d0,file="+disk+",format=raw,if=none", "-device", "virtio-blk-device,drive=d0",
				"-netdev", "tap,id=n0,ifname=embtap-bench,script=no,downscript=no,vhost=off",
				"-device", "virtio-net-device,netdev=n0,mac="+mac)...)
		})
	}
	if failed > 0 {
		b.Errorf("%d of the runs failed (above)", failed)
	}
	report := func(who string) (m map[string]float64) {
		m = map[string]float64{}
		rs := runs[who]
		var moved float64
		for _, r := range rs {
			for p, v := range r.io {
				if strings.HasPrefix(p, "seq") {
					m[p+"-MBps"] += v[0] / v[2] / 1e6 / float64(len(rs))
				} else {
					m[p+"-IOPS"] += v[1] / v[2] / float64(len(rs))
				}
				moved += v[0]
			}
			m["net-MBps"] += float64(r.netBytes) / r.netSecs / 1e6 / float64(len(rs))
			moved += float64(r.netBytes)
			m["exits"] += float64(r.exits["exits"])
		}
		m["exits-per-MiB"] = m["exits"] / (moved / (1 << 20))
		delete(m, "exits")
		return m
	}
	q := report("qemu")
	for _, who := range []string{"ember", "ember-huge"} {
		e := report(who)
		for k, v := range e {
			b.ReportMetric(v, who+"-"+k)
			if q[k] > 0 {
				b.ReportMetric(v/q[k], "ratio-"+who+"-"+k)
			}
		}
		fmt.Fprintf(os.Stderr, "device bench: %-10s %v\n", who, e)
	}
	for k, v := range q {
		b.ReportMetric(v, "qemu-"+k)
	}
	fmt.Fprintf(os.Stderr, "device bench: %-10s %v\n", "qemu", q)
}

// tail is the last n lines of a file ("" if unreadable).
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// kmsgTail is the last n records of this machine's kernel log, where a
// KVM that gave up on a guest says why.
func kmsgTail(n int) string {
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return err.Error()
	}
	defer unix.Close(fd)
	var recs []string
	buf := make([]byte, 8192)
	for {
		k, err := unix.Read(fd, buf)
		if err == unix.EPIPE {
			continue // overwritten while read: the next one follows
		}
		if err != nil || k <= 0 {
			break
		}
		recs = append(recs, strings.TrimSpace(string(buf[:k])))
	}
	return strings.Join(recs[max(0, len(recs)-n):], "\n")
}
