package plan

import (
	"bytes"
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// planFD is a memfd holding b, as Handoff leaves it.
func planFD(t *testing.T, b []byte) int {
	t.Helper()
	fd, err := unix.MemfdCreate("plan-test", 0)
	if err != nil {
		t.Skipf("memfd: %v", err)
	}
	f := os.NewFile(uintptr(fd), "plan")
	t.Cleanup(func() { f.Close() })
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	return fd
}

// ember-vmm reads the plan from the descriptor (from its start, as the
// writer left its offset at the end) and checks it before any VM exists:
// a plan naming a missing kernel fails with ember's status and the path.
func TestMainReadsPlanFromDescriptor(t *testing.T) {
	b, _ := json.Marshal(&Plan{Kernel: "/nonexistent/bzImage", CPUs: 1, Memory: 64 << 20})
	fd := planFD(t, b)
	var stderr bytes.Buffer
	if got := Main([]string{"--plan-fd", strconv.Itoa(fd), "--kvm-device", "/nonexistent/kvm"}, &stderr); got != ExitError {
		t.Fatalf("status %d, want %d; stderr %q", got, ExitError, stderr.String())
	}
	if !strings.Contains(stderr.String(), "/nonexistent/bzImage") {
		t.Fatalf("stderr %q does not name the kernel", stderr.String())
	}
}

func TestMainRefusesBadInput(t *testing.T) {
	for name, c := range map[string]struct {
		args []string
		want string
	}{
		"no plan":   {nil, "no plan"},
		"bad json":  {[]string{"--plan-fd", strconv.Itoa(planFD(t, []byte("{not json")))}, "plan:"},
		"huge plan": {[]string{"--plan-fd", strconv.Itoa(planFD(t, bytes.Repeat([]byte(" "), maxPlan+1)))}, "larger than"},
		"bad level": {[]string{"--log-level", "loud"}, "--log-level"},
		"no file":   {[]string{"--plan", "/nonexistent/plan.json"}, "/nonexistent/plan.json"},
		"bad flag":  {[]string{"--no-such-flag"}, "no-such-flag"},
	} {
		t.Run(name, func(t *testing.T) {
			var stderr bytes.Buffer
			if got := Main(c.args, &stderr); got != ExitError {
				t.Fatalf("status %d, want %d", got, ExitError)
			}
			if !strings.Contains(stderr.String(), c.want) {
				t.Fatalf("stderr %q, want it to contain %q", stderr.String(), c.want)
			}
		})
	}
}

func TestMainHelp(t *testing.T) {
	var stderr bytes.Buffer
	if got := Main([]string{"-h"}, &stderr); got != 0 || !strings.Contains(stderr.String(), "-plan-fd") {
		t.Fatalf("-h: status %d, stderr %q", got, stderr.String())
	}
}

func TestVMMEnv(t *testing.T) {
	base := []string{"PATH=/bin", "HOME=/root"}
	for _, c := range []struct {
		env  []string
		cpus int
		want string
	}{
		{base, 1, "GOMAXPROCS=2"},
		{base, 4, "GOMAXPROCS=5"},
		{base, 16, "GOMAXPROCS=17"},
		{append(slices.Clone(base), "GOMAXPROCS=7"), 1, "GOMAXPROCS=7"},
	} {
		got := vmmEnv(c.env, c.cpus)
		var set []string
		for _, e := range got {
			if strings.HasPrefix(e, "GOMAXPROCS=") {
				set = append(set, e)
			}
		}
		if len(set) != 1 || set[0] != c.want || !slices.Contains(got, "PATH=/bin") {
			t.Errorf("vmmEnv(%v, %d) = %v, want one %s and the rest kept", c.env, c.cpus, got, c.want)
		}
	}
	// The caller's slice keeps its contents, spare capacity included.
	roomy := append(make([]string, 0, 4), base...)
	vmmEnv(roomy, 1)
	if spare := roomy[:3][2]; spare != "" {
		t.Fatalf("vmmEnv wrote %q into its argument's spare capacity", spare)
	}
}

// ember-vmm's Go heap stays on 4 KiB pages (disablethp), whatever else
// the user's GODEBUG says; a setting of the user's own comes later and wins.
func TestVMMEnvGODEBUG(t *testing.T) {
	for _, c := range []struct {
		env  []string
		want string
	}{
		{[]string{"PATH=/bin"}, "GODEBUG=disablethp=1"},
		{[]string{"GODEBUG=gctrace=1", "PATH=/bin"}, "GODEBUG=disablethp=1,gctrace=1"},
		{[]string{"GODEBUG=disablethp=0"}, "GODEBUG=disablethp=1,disablethp=0"},
	} {
		var got []string
		for _, e := range vmmEnv(c.env, 1) {
			if strings.HasPrefix(e, "GODEBUG=") {
				got = append(got, e)
			}
		}
		if len(got) != 1 || got[0] != c.want {
			t.Errorf("vmmEnv(%v) GODEBUG = %v, want %s", c.env, got, c.want)
		}
	}
}
