// Package tests holds ember's end-to-end tests: they boot real kernels with
// the built bin/ember. On a host with a usable /dev/kvm they run directly;
// otherwise the whole suite re-runs itself inside one nested L1 guest
// (QEMU/TCG with nested SVM), so one emulated host boots all the guests.
package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ember-vmm/ember/images"
	"github.com/ember-vmm/ember/vmm/launch"
	"github.com/ember-vmm/ember/vmm/nested"
)

// env carries what every test needs; filled by TestMain.
var env struct {
	ember      string // bin/ember
	initBin    string // bin/ember-init
	cacheDir   string
	inside     bool   // running inside the nested L1 guest
	hostile    string // the hostile guest program, built on the host
	ioperf     string // the disk benchmark guest program
	sharecheck string // the host-share checks, run in the guest from the share
	kvmTest    string // vmm/kvm's test binary, run where KVM works
	vmmTest    string // vmm's test binary (synthetic guests on real KVM)
	direct     bool   // real KVM is usable here: VM tests run in this process
	skip       string // why VM tests cannot run at all
	images     []imageSet
}

type imageSet struct {
	Flavour   string `json:"flavour"`
	Version   string `json:"version"`
	Kernel    string `json:"kernel"`
	Vmlinux   string `json:"vmlinux"`
	Initramfs string `json:"initramfs"`
	L1        string `json:"l1_initramfs"`
}

const insideVar = "EMBER_E2E_INSIDE"

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	root, _ := filepath.Abs("..")
	env.ember = filepath.Join(root, "bin", "ember")
	env.initBin = filepath.Join(root, "bin", "ember-init")
	env.cacheDir = os.Getenv("EMBER_CACHE_DIR")
	if env.cacheDir == "" {
		env.cacheDir = images.DefaultDir()
	}
	env.inside = os.Getenv(insideVar) == "1"
	// ember hands every VM on KVM to ember-vmm beside it; without it the
	// tests would not run the process users get.
	for _, p := range []string{env.ember, env.initBin, filepath.Join(root, "bin", "ember-vmm")} {
		if _, err := os.Stat(p); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %s missing: run `make build` first\n", p)
			return 1
		}
	}
	// Guest programs the tests add to the initramfs, built static here.
	for _, g := range []struct {
		dst           *string
		envName, name string
	}{{&env.hostile, "EMBER_E2E_HOSTILE", "hostile"}, {&env.ioperf, "EMBER_E2E_IOPERF", "ioperf"},
		{&env.sharecheck, "EMBER_E2E_SHARECHECK", "sharecheck"}} {
		*g.dst = os.Getenv(g.envName)
		if *g.dst != "" {
			continue
		}
		*g.dst = filepath.Join(root, "bin", "e2e-"+g.name)
		build := exec.Command("go", "build", "-o", *g.dst, "./"+g.name)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: building the %s guest program: %v\n%s", g.name, err, out)
			return 1
		}
	}
	for _, b := range []struct {
		dst *string
		env string
		bin string
		pkg string
	}{
		{&env.kvmTest, "EMBER_E2E_KVMTEST", "e2e-kvm.test", "../vmm/kvm"},
		{&env.vmmTest, "EMBER_E2E_VMMTEST", "e2e-vmm.test", "../vmm"},
	} {
		if *b.dst = os.Getenv(b.env); *b.dst != "" {
			continue
		}
		*b.dst = filepath.Join(root, "bin", b.bin)
		if out, err := exec.Command("go", "test", "-c", "-o", *b.dst, b.pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: building %s's tests: %v\n%s", b.pkg, err, out)
			return 1
		}
	}
	if err := loadImages(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: images: %v\n", err)
		return 1
	}
	if env.inside || launch.ProbeKVM("/dev/kvm") == nil {
		env.direct = true
		return m.Run()
	}
	kvmErr := launch.ProbeKVM("/dev/kvm")
	if err := nested.Check(); err != nil {
		env.skip = fmt.Sprintf("no usable KVM (%v) and no nested path (%v)", kvmErr, err)
		if os.Getenv("CI") != "" {
			fmt.Fprintf(os.Stderr, "e2e: FAIL: end-to-end tests cannot run in CI: %s\n", env.skip)
			return 1
		}
		fmt.Fprintf(os.Stderr, "\n*** e2e: SKIPPING every VM test: %s ***\n\n", env.skip)
		return m.Run()
	}
	fmt.Fprintf(os.Stderr, "e2e: %v\ne2e: running the VM tests inside one nested L1 guest (QEMU/TCG + kvm-amd)\n", kvmErr)
	// Host-side tests (bad input, --accel nested itself) run here; the VM
	// suite runs in L1. Both at once: each keeps about one core busy (an
	// emulated guest mostly runs one vCPU at a time), so together they use
	// the two a runner has. Benchmarks keep the host to themselves.
	inside := make(chan int, 1)
	var code int
	if benchmarking() {
		code = m.Run()
		inside <- runInside()
	} else {
		go func() { inside <- runInside() }()
		code = m.Run()
	}
	if c := <-inside; c != 0 {
		code = c
	}
	return code
}

// benchmarking says benchmarks were asked for (-test.bench).
func benchmarking() bool {
	return slices.ContainsFunc(os.Args[1:], func(a string) bool {
		return strings.HasPrefix(a, "-test.bench=") && a != "-test.bench="
	})
}

func loadImages() error {
	out, err := exec.Command(env.ember, "images", "fetch", "--json", "--cache-dir", env.cacheDir).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return fmt.Errorf("%v: %s", err, ee.Stderr)
		}
		return err
	}
	return json.Unmarshal(out, &env.images)
}

func image(t testing.TB, flavour string) imageSet {
	for _, s := range env.images {
		if s.Flavour == flavour {
			return s
		}
	}
	t.Fatalf("no images for flavour %s", flavour)
	return imageSet{}
}

// runInside re-runs this test binary inside L1 with real KVM.
func runInside() int {
	// go test builds the binary under /tmp, which L1 does not share: copy
	// it next to ember.
	self := filepath.Join(filepath.Dir(env.ember), "e2e.test")
	if err := copyExecutable(self); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	l1 := image(nil, "amd64")
	args := []string{"/usr/bin/env", insideVar + "=1", "EMBER_CACHE_DIR=" + env.cacheDir, "EMBER_E2E_HOSTILE=" + env.hostile, "EMBER_E2E_IOPERF=" + env.ioperf, "EMBER_E2E_SHARECHECK=" + env.sharecheck, "EMBER_BENCH_SHARE_FILES=" + os.Getenv("EMBER_BENCH_SHARE_FILES"), "EMBER_BENCH_SHARE_MIB=" + os.Getenv("EMBER_BENCH_SHARE_MIB"), "EMBER_BENCH_SHARE_ONLY=" + os.Getenv("EMBER_BENCH_SHARE_ONLY"), "EMBER_E2E_KVMTEST=" + env.kvmTest, "EMBER_E2E_VMMTEST=" + env.vmmTest, "PATH=" + os.Getenv("PATH"),
		self, "-test.v"}
	runFilter := "VM"
	// Benchmarks run long, heavy phases: they get more time, and L1 may
	// go longer without a heartbeat before it counts as lost (a stall of
	// a second on real hardware is about a minute under the emulator).
	timeout, stall := "25m", time.Duration(0)
	if benchmarking() {
		timeout, stall = "90m", 10*time.Minute
	}
	for _, a := range os.Args[1:] {
		switch {
		case strings.HasPrefix(a, "-test.run="):
			runFilter = strings.TrimPrefix(a, "-test.run=")
		case strings.HasPrefix(a, "-test.bench"):
			args = append(args, a)
		case strings.HasPrefix(a, "-test.count"):
			args = append(args, a)
		}
	}
	args = append(args, "-test.timeout", timeout)
	args = append(args, "-test.run", runFilter)
	wd, _ := os.Getwd()
	start := time.Now()
	// Prefixed whole lines: the host-side tests write to the same streams
	// meanwhile.
	l1Out, l1Err := &prefixWriter{w: os.Stdout, prefix: "L1| "}, &prefixWriter{w: os.Stderr, prefix: "L1| "}
	defer l1Out.Flush()
	defer l1Err.Flush()
	run := func(args []string) (*nested.Result, string, error) {
		out := &syncBuffer{}
		res, err := nested.Run(context.Background(), nested.Options{
			Kernel: l1.Kernel, Initrd: l1.L1, Args: args, Dir: wd, CPUs: 2, MemoryMiB: 6144, Files: []string{env.cacheDir}, Stall: stall,
			Stdout: io.MultiWriter(l1Out, out), Stderr: l1Err,
		})
		return res, out.String(), err
	}
	res, out, err := run(args)
	if err != nil {
		// The L1 guest itself is sometimes lost under the emulator
		// (README, known issues). Once, the tests that had not yet
		// passed run again in a fresh L1, saying so.
		done := passedTests(out)
		fmt.Fprintf(os.Stderr, "e2e: RETRY: the L1 guest running the VM tests was lost (%v); running again the tests that had not passed (%d had), in a fresh L1\n", err, len(done))
		again := args
		if len(done) > 0 {
			again = append(slices.Clone(args), "-test.skip", "^("+strings.Join(done, "|")+")$")
		}
		res, _, err = run(again)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: nested L1 run: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: L1 suite finished with status %d in %s (L1 boot %s)\n", res.ExitStatus, time.Since(start).Round(time.Millisecond), res.L1Boot.Round(time.Millisecond))
	return res.ExitStatus
}

// needVM skips a VM test only when nothing can run VMs here, loudly; in
// the nested setup the host process leaves VM tests to the L1 run.
func needVM(t *testing.T) {
	t.Helper()
	if env.skip != "" {
		t.Skipf("SKIP (no way to run VMs here): %s", env.skip)
	}
	if !env.direct {
		t.Skip("runs inside the nested L1 guest")
	}
}

// besideVM is needVM for a test whose VM may run beside another test's:
// under the emulator a guest mostly keeps one vCPU busy, so two at a time
// use the cores a runner has. The tests that stream the most through
// their devices (shares, stdio, net) run alone, as before.
func besideVM(t *testing.T) {
	t.Helper()
	needVM(t)
	t.Parallel()
}

func copyExecutable(dst string) error {
	src, err := os.Executable()
	if err != nil {
		return err
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// passedTests are the top-level tests a verbose test run's output says
// passed or were skipped.
func passedTests(out string) []string {
	var names []string
	for _, line := range strings.Split(out, "\n") {
		for _, p := range []string{"--- PASS: ", "--- SKIP: "} {
			if rest, ok := strings.CutPrefix(line, p); ok {
				if name, _, ok := strings.Cut(rest, " "); ok && !strings.Contains(name, "/") {
					names = append(names, regexp.QuoteMeta(name))
				}
			}
		}
	}
	return names
}

func TestPassedTests(t *testing.T) {
	out := "=== RUN   TestVMA\n--- PASS: TestVMA (1.00s)\n    --- PASS: TestVMA/sub (0.5s)\n--- SKIP: TestVMB (0.00s)\n--- FAIL: TestVMC (2.00s)\n=== RUN   TestVMD\n"
	got := passedTests(out)
	if !slices.Equal(got, []string{"TestVMA", "TestVMB"}) {
		t.Fatalf("passed %q, want TestVMA and TestVMB", got)
	}
}

func TestPrefixWriter(t *testing.T) {
	var b strings.Builder
	p := &prefixWriter{w: &b, prefix: "L1| "}
	for _, s := range []string{"=== RUN", "   TestVMA\n--- PASS: TestVMA\n", "tail"} {
		if n, err := p.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if got, want := b.String(), "L1| === RUN   TestVMA\nL1| --- PASS: TestVMA\n"; got != want {
		t.Fatalf("before Flush %q, want %q", got, want)
	}
	p.Flush()
	if !strings.HasSuffix(b.String(), "L1| tail\n") {
		t.Fatalf("Flush wrote %q", b.String())
	}
	b.Reset()
	long := strings.Repeat("x", 70<<10)
	p.Write([]byte(long))
	if !strings.HasPrefix(b.String(), "L1| xxx") || len(b.String()) < 64<<10 {
		t.Fatalf("a 70 KiB line was held back: %d bytes out", len(b.String()))
	}
}
