package tests

import (
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

const bootLimit = 3 * time.Minute

func TestVMDefaultBoot(t *testing.T) {
	needVM(t)
	r := ember(t, bootLimit, vmArgs("--json")...)
	wantCode(t, r, 0)
	cloud := image(t, "cloud-amd64")
	wantOut(t, r, "kernel: "+cloud.Version)
	wantOut(t, r, "cpus: 1")
	rep := report(t, r)
	if rep["accel"] != "kvm" || rep["outcome"] != "exited" {
		t.Fatalf("report accel=%v outcome=%v, want kvm exited", rep["accel"], rep["outcome"])
	}
	if b, _ := rep["boot_ms"].(float64); b <= 0 {
		t.Fatalf("boot_ms = %v, want > 0 (the guest init's mark never arrived)", rep["boot_ms"])
	}
}

func TestVMExitStatus(t *testing.T) {
	needVM(t)
	for _, code := range []int{0, 1, 42, 255} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			r := ember(t, bootLimit, vmArgs("--", "sh", "-c", fmt.Sprintf("echo out-%d; exit %d", code, code))...)
			wantCode(t, r, code)
			wantOut(t, r, fmt.Sprintf("out-%d", code))
		})
	}
}

func TestVMGenericKernelSMPAndMemory(t *testing.T) {
	needVM(t)
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
	needVM(t)
	// The cloud flavour has no MP-table parser: its CPUs come from the ACPI
	// MADT, and its console IRQ from the DSDT.
	r := ember(t, bootLimit, vmArgs("--cpus", "2", "--", "ember-info")...)
	wantCode(t, r, 0)
	wantOut(t, r, "cpus: 2")
}

func TestVMPVH(t *testing.T) {
	needVM(t)
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
	needVM(t)
	r := ember(t, bootLimit, vmArgs("--", "sh", "-c", "echo bye; poweroff")...)
	wantCode(t, r, 0)
	wantOut(t, r, "bye")
}

func TestVMPanic(t *testing.T) {
	needVM(t)
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
	needVM(t)
	r := ember(t, bootLimit, vmArgs("--timeout", "20s", "--", "sleep", "600")...)
	wantCode(t, r, 124)
	if !regexp.MustCompile(`timeout`).MatchString(r.stderr) {
		t.Fatalf("stderr does not mention the timeout:\n%s", r.stderr)
	}
}

// TestVMKVMPackage runs vmm/kvm's own tests (a real-mode guest, immediate
// exit) where KVM works; on the host they skip for want of VMX/SVM.
func TestVMKVMPackage(t *testing.T) {
	needVM(t)
	out, err := exec.Command(env.kvmTest, "-test.v", "-test.count=1").CombinedOutput()
	if err != nil {
		t.Fatalf("vmm/kvm tests: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestRealModeGuest") {
		t.Fatalf("TestRealModeGuest did not run and pass:\n%s", out)
	}
}
