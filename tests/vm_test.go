package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
)

const bootLimit = 3 * time.Minute

func TestVMDefaultBoot(t *testing.T) {
	besideVM(t)
	r := ember(t, bootLimit, vmArgs("--json")...)
	wantCode(t, r, 0)
	cloud := image(t, "cloud-amd64")
	wantOut(t, r, "kernel: "+cloud.Version)
	wantOut(t, r, "cpus: 1")
	rep := report(t, r)
	if rep["accel"] != "kvm" || rep["outcome"] != "exited" {
		t.Fatalf("report accel=%v outcome=%v, want kvm exited", rep["accel"], rep["outcome"])
	}
	if rep["vmm"] != "ember-vmm" {
		t.Fatalf("report vmm=%v: ember did not hand the VM to ember-vmm", rep["vmm"])
	}
	if b, _ := rep["boot_ms"].(float64); b <= 0 {
		t.Fatalf("boot_ms = %v, want > 0 (the guest init's mark never arrived)", rep["boot_ms"])
	}
	// The VMM's memory beyond guest RAM: a few MiB, never the guest's
	// 512 MiB mistaken for its own.
	if o, _ := rep["vmm_overhead_mib"].(float64); o <= 0 || o > 64 {
		t.Fatalf("vmm_overhead_mib = %v, want a few MiB", rep["vmm_overhead_mib"])
	}
	// Its anonymous part (heap, stacks) is some of it, not all: the
	// executable's pages are resident too.
	if a, _ := rep["vmm_anon_mib"].(float64); a <= 0 || a >= rep["vmm_overhead_mib"].(float64) {
		t.Fatalf("vmm_anon_mib = %v with overhead %v", rep["vmm_anon_mib"], rep["vmm_overhead_mib"])
	}
}

// TestVMPanicOnWarn: a clean boot of every kernel raises no warning, so
// --panic-on-warn runs the command. Under the nested emulator every stock
// kernel used to warn about its XSAVE area size at boot (and so panic);
// there ember hides XSAVE from the guest, and the guest must not see it.
func TestVMPanicOnWarn(t *testing.T) {
	besideVM(t)
	hidden := os.Getenv(proto.GuestXSAVEEnv) == "off"
	for _, flavour := range deviceKernels() {
		t.Run(flavour, func(t *testing.T) {
			r := ember(t, bootLimit, vmArgs("--kernel", kernelArg(flavour), "--panic-on-warn", "--", "cat", "/proc/cpuinfo")...)
			wantCode(t, r, 0)
			var flags []string
			for _, l := range strings.Split(r.stdout, "\n") {
				if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "flags" {
					flags = strings.Fields(v)
				}
			}
			if !slices.Contains(flags, "sse2") {
				t.Fatalf("no flags line with sse2 in the guest's /proc/cpuinfo:\n%s", r.stdout)
			}
			if hidden && (slices.Contains(flags, "xsave") || slices.Contains(flags, "avx")) {
				t.Errorf("%s=off, yet the guest has xsave or avx: %v", proto.GuestXSAVEEnv, flags)
			}
		})
	}
}

func TestVMExitStatus(t *testing.T) {
	besideVM(t)
	for _, code := range []int{0, 1, 42, 255} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			r := ember(t, bootLimit, vmArgs("--", "sh", "-c", fmt.Sprintf("echo out-%d; exit %d", code, code))...)
			wantCode(t, r, code)
			wantOut(t, r, fmt.Sprintf("out-%d", code))
		})
	}
}

func TestVMGenericKernelSMPAndMemory(t *testing.T) {
	besideVM(t)
	r := ember(t, bootLimit, vmArgs("--kernel", "debian:amd64", "--cpus", "2", "--memory", "4G", "--", "ember-info")...)
	wantCode(t, r, 0)
	wantOut(t, r, "kernel: "+image(t, "amd64").Version)
	wantOut(t, r, "cpus: 2")
	m := regexp.MustCompile(`memory: (\d+) MiB`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no memory line:\n%s", r.stdout)
	}
	if mib, _ := strconv.Atoi(m[1]); mib < 3600 || mib > 4096 {
		t.Fatalf("guest sees %d MiB, want about 4096 (RAM above the 32-bit hole must be there)", mib)
	}
}

func TestVMCloudKernelSMP(t *testing.T) {
	besideVM(t)
	// The cloud flavour has no MP-table parser: its CPUs come from the ACPI
	// MADT, and its console IRQ from the DSDT.
	r := ember(t, bootLimit, vmArgs("--cpus", "2", "--", "ember-info")...)
	wantCode(t, r, 0)
	wantOut(t, r, "cpus: 2")
}

func TestVMPVH(t *testing.T) {
	besideVM(t)
	for _, fl := range []string{"cloud-amd64", "amd64"} {
		t.Run(fl, func(t *testing.T) {
			img := image(t, fl)
			r := ember(t, bootLimit, vmArgs("--kernel", img.Vmlinux, "--initrd", img.Initramfs, "--", "ember-info")...)
			wantCode(t, r, 0)
			wantOut(t, r, "kernel: "+img.Version)
		})
	}
}

func TestVMPowerOff(t *testing.T) {
	besideVM(t)
	r := ember(t, bootLimit, vmArgs("--", "sh", "-c", "echo bye; poweroff")...)
	wantCode(t, r, 0)
	wantOut(t, r, "bye")
}

func TestVMPanic(t *testing.T) {
	besideVM(t)
	r := ember(t, bootLimit, vmArgs("--json", "--", "sh", "-c", "echo c > /proc/sysrq-trigger")...)
	wantCode(t, r, 123)
	rep := report(t, r)
	if rep["outcome"] != "panic" {
		t.Fatalf("outcome %v, want panic", rep["outcome"])
	}
	if !regexp.MustCompile(`guest kernel panic`).MatchString(r.stderr) {
		t.Fatalf("stderr does not say the guest panicked:\n%s", r.stderr)
	}
}

func TestVMTimeout(t *testing.T) {
	besideVM(t)
	r := ember(t, bootLimit, vmArgs("--timeout", "20s", "--", "sleep", "600")...)
	wantCode(t, r, 124)
	if !regexp.MustCompile(`timeout`).MatchString(r.stderr) {
		t.Fatalf("stderr does not mention the timeout:\n%s", r.stderr)
	}
}

// TestVMPackageTests runs the KVM tests of vmm/kvm (real-mode guests:
// ioeventfd datamatch, irqfd with resample, refused MSRs, MP state) and of
// vmm (synthetic PVH guests: halted for good, a panicking device, Close
// while running, a stalled console) where KVM works. On the host they skip
// for want of VMX/SVM; here every one of them must run and pass.
func TestVMPackageTests(t *testing.T) {
	besideVM(t)
	for _, c := range []struct {
		bin   string
		tests []string
	}{
		{env.kvmTest, []string{"TestRealModeGuest", "TestIOEventDataMatch", "TestSetMSRsRefused", "TestIRQFDResample", "TestHaltedForGood"}},
		{env.vmmTest, []string{"TestMachineExitStatus", "TestMachineHaltedForGood", "TestMachinePanicInDevice",
			"TestMachineTimeout", "TestMachineCloseWhileRunning", "TestMachineStalledConsole"}},
	} {
		out, err := exec.Command(c.bin, "-test.v", "-test.count=1", "-test.run", "^("+strings.Join(c.tests, "|")+")$").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", filepath.Base(c.bin), err, out)
		}
		for _, name := range c.tests {
			if !strings.Contains(string(out), "--- PASS: "+name+" ") {
				t.Errorf("%s did not run and pass:\n%s", name, out)
			}
		}
		t.Logf("%s:\n%s", filepath.Base(c.bin), out)
	}
}

// TestVMInteractiveShell: on a terminal, ember gives a shell whose
// terminal has the host terminal's size, follows its resizes, and quits
// on Ctrl-A x.
func TestVMInteractiveShell(t *testing.T) {
	besideVM(t)
	interactiveSession(t, bootLimit, vmArgs()...)
}

// TestVMStalledStdout: a reader that stops taking ember's output (a
// stalled pipe) neither stalls the guest nor stops --timeout: ember ends
// with 124 in bounded time. (Under nesting every console byte is an
// emulated VM exit, too slow to overflow the console buffer here; the
// vmm tests count dropped bytes with a small buffer.)
func TestVMStalledStdout(t *testing.T) {
	besideVM(t)
	result := filepath.Join(t.TempDir(), "result.json")
	cmd := exec.Command(env.ember, vmArgs("--timeout", "25s", "--result-file", result, "--", "sh", "-c",
		"while true; do echo 0123456789012345678901234567890123456789012345678901234567890123456789; done")...)
	out, err := cmd.StdoutPipe() // never read
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	var stderr syncBuffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		code := cmd.ProcessState.ExitCode()
		if code != 124 {
			rep, _ := os.ReadFile(result)
			t.Fatalf("exit status %d (%v), want 124\nstderr:\n%s\nresult:\n%s", code, err, stderr.String(), rep)
		}
		if !strings.Contains(stderr.String(), "timeout") {
			t.Fatalf("stderr does not report the timeout:\n%s", stderr.String())
		}
		t.Logf("ended after %s: %s", time.Since(start).Round(time.Second), strings.TrimSpace(stderr.String()))
	case <-time.After(bootLimit):
		cmd.Process.Kill()
		t.Fatalf("ember still running %s after a 25s timeout with a stalled stdout\nstderr:\n%s", bootLimit, stderr.String())
	}
}

// TestVML1KVMParameters: in ember's nested L1 guest, kvm-amd runs with
// the parameters L1's command line gives it (no nested paging: README,
// known issues), which a module loaded by init only gets if init passes
// them on.
func TestVML1KVMParameters(t *testing.T) {
	needVM(t)
	if !env.inside {
		t.Skip("runs inside ember's nested L1 guest only")
	}
	for p, want := range map[string]string{"npt": "0", "vgif": "0", "vls": "0"} {
		b, err := os.ReadFile("/sys/module/kvm_amd/parameters/" + p)
		got := strings.TrimSpace(string(b))
		if err != nil || (got != want && got != "N") {
			t.Errorf("kvm_amd.%s = %q (%v), want %s as L1's command line says", p, got, err, want)
		}
	}
}

// Inside L1, every CPU's tick is periodic on the local APIC timer (not
// TSC-deadline, not one-shot), as L1's command line asks: a lost
// interrupt then costs one tick, not the CPU's timers for good.
func TestVML1PeriodicTimer(t *testing.T) {
	needVM(t)
	if !env.inside {
		t.Skip("runs inside ember's nested L1 guest only")
	}
	b, err := os.ReadFile("/proc/timer_list")
	if err != nil {
		t.Fatal(err)
	}
	var devices, modes []string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if v, ok := strings.CutPrefix(l, "Clock Event Device:"); ok {
			devices = append(devices, strings.TrimSpace(v))
		}
		if v, ok := strings.CutPrefix(l, "Tick Device: mode:"); ok {
			modes = append(modes, strings.TrimSpace(v))
		}
	}
	if len(modes) < 2 || slices.ContainsFunc(modes, func(m string) bool { return m != "0" }) {
		t.Errorf("tick device modes %v, want 0 (periodic) on every CPU", modes)
	}
	// The first is the broadcast device (the HPET); then one per CPU.
	if !slices.Contains(devices, "lapic") || slices.Contains(devices, "lapic-deadline") {
		t.Errorf("clock event devices %v, want the CPUs' lapic (not lapic-deadline)", devices)
	}
}
