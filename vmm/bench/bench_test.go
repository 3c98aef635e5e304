package bench

import (
	"bytes"
	"context"
	"encoding/xml"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/images"
)

func TestSummarize(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want Stats
	}{
		{[]float64{5}, Stats{5, 5, 5, 5}},
		{[]float64{4, 1, 3, 2}, Stats{2.5, 4, 1, 4}},
		{[]float64{10, 1, 2, 3, 4, 5, 6, 7, 8, 9}, Stats{5.5, 9, 1, 10}},
		{[]float64{3, 1, 2}, Stats{2, 3, 1, 3}},
	} {
		if got := Summarize(c.in); *got != c.want {
			t.Errorf("Summarize(%v) = %+v, want %+v", c.in, *got, c.want)
		}
	}
	if Summarize(nil) != nil {
		t.Error("Summarize(nil) is not nil")
	}
}

func TestIsMarker(t *testing.T) {
	for line, want := range map[string]bool{
		images.NeutralMarker:                      true,
		images.NeutralMarker + "\r":               true,
		"console: " + images.NeutralMarker:        true,
		"echo " + images.NeutralMarker:            false,
		"[    1.0] " + images.NeutralMarker + "x": false,
	} {
		if isMarker(line) != want {
			t.Errorf("isMarker(%q) = %v", line, !want)
		}
	}
}

// The neutral init itself is a contender that needs no VM or runtime:
// it prints the marker and exits.
func TestOnceMeasures(t *testing.T) {
	p := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(p, images.NeutralInit(), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := once(context.Background(), &contender{name: "init", args: []string{p}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if s.ReadyMS <= 0 || s.ExitMS < s.ReadyMS {
		t.Fatalf("times: %+v", s)
	}
	if _, err := once(context.Background(), &contender{name: "false", args: []string{"false"}}, time.Minute); err == nil || !strings.Contains(err.Error(), "without the marker") {
		t.Fatalf("a contender without the marker: %v", err)
	}
	if _, err := once(context.Background(), &contender{name: "sleep", args: []string{"sleep", "60"}}, 200*time.Millisecond); err == nil || !strings.Contains(err.Error(), "no marker within") {
		t.Fatalf("a contender that hangs: %v", err)
	}
}

func TestRunReportsUnavailable(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	n := &images.Neutral{Initrd: "/x", Bundle: "/b", Tar: "/t", Key: "k"}
	res := Run(context.Background(), Options{Runs: 1, VMs: true, Containers: true, Docker: true, Neutral: n, Self: "/nonexistent/ember", Kernel: "/k", MemoryMiB: 128, Where: "host"})
	names := map[string]Result{}
	for _, r := range res {
		names[r.Name] = r
	}
	for _, n := range []string{"ember", "qemu-microvm", "qemu-q35", "crun", "runc", "docker"} {
		r, ok := names[n]
		if !ok || r.Available || r.Reason == "" {
			t.Errorf("%s: %+v", n, r)
		}
	}
	if !strings.Contains(names["qemu-microvm"].Reason, "not found") {
		t.Errorf("qemu reason: %q", names["qemu-microvm"].Reason)
	}
}

func TestReportOutputs(t *testing.T) {
	s := func(v float64) *Stats { return &Stats{v, v, v, v} }
	rep := &Report{Accel: "kvm", Kernel: "debian:cloud-amd64", MemoryMiB: 512, Runs: 3, Results: []Result{
		{Name: "ember", Kind: "vm", Where: "host", Init: "neutral", Available: true, Ready: s(100), Exit: s(150), Memory: &Memory{Overhead: 4.5, Private: 2},
			Phases: []Phase{{"setup", 10, 0}, {"kernel", 120, 50}}},
		{Name: "qemu-microvm", Kind: "vm", Where: "host", Init: "neutral", Available: true, Ready: s(200), Exit: s(300), Memory: &Memory{Overhead: 40}},
		{Name: "crun", Kind: "container", Where: "host", Init: "neutral", Available: true, Ready: s(50), Exit: s(60), Memory: &Memory{RSS: 3}},
		{Name: "docker", Kind: "container", Where: "host", Reason: "no <engine> & such"},
	}}
	var tb bytes.Buffer
	rep.Table(&tb)
	for _, want := range []string{"ember", "qemu-microvm", "not available: docker (host): no <engine>", "ember / qemu-microvm (host): first output 0.50×, exit 0.50×", "ember / crun (host): first output 2.00×",
		"ember (host) phases, medians: setup 10 ms (0 exits), kernel 120 ms (50 exits); together 130 ms of 150 ms to exit (86.7%)"} {
		if !strings.Contains(tb.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, tb.String())
		}
	}
	var sb bytes.Buffer
	if err := rep.SVG(&sb); err != nil {
		t.Fatal(err)
	}
	all, rects := svgText(t, &sb)
	// Background, three legend boxes, two phase names, two phases per
	// available contender but ember, which has its own two and the rest
	// of its time.
	if rects != 4+2+3+2*2 {
		t.Errorf("%d rects", rects)
	}
	for _, want := range []string{"ember [host]", "kernel 120", "150 ms, 4.5 MiB overhead", "not available: docker [host]: no <engine> & such"} {
		if !strings.Contains(all, want) {
			t.Errorf("SVG lacks %q: %s", want, all)
		}
	}
}

func TestEmberReportPhases(t *testing.T) {
	out := "console: EMBER-BENCH-READY\n{\n  \"exits\": {\"io\": 194},\n  \"phases\": [{\"name\": \"setup\", \"start_ms\": 0, \"ms\": 40, \"exits\": 0}, {\"name\": \"guest\", \"start_ms\": 41, \"ms\": 900, \"exits\": 194}]\n}\n"
	exits, ph := emberReport(out)
	if exits["io"] != 194 || len(ph) != 2 || ph[1] != (Phase{"guest", 900, 194}) {
		t.Fatalf("emberReport: %v %+v", exits, ph)
	}
	runs := []Sample{{Phases: ph}, {Phases: []Phase{{"setup", 60, 0}, {"guest", 700, 190}}}, {Phases: []Phase{{"setup", 50, 0}, {"guest", 800, 192}}}}
	if m := medianPhases(runs); len(m) != 2 || m[0] != (Phase{"setup", 50, 0}) || m[1] != (Phase{"guest", 800, 192}) {
		t.Fatalf("medianPhases: %+v", m)
	}
}

func TestWrap(t *testing.T) {
	got := wrap("aaa bbb ccc dddddddddd e", 7)
	want := []string{"aaa bbb", "ccc", "ddddddd", "ddd e"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("wrap = %q", got)
	}
}

// Three idle programs at once, measured and stopped: the density path
// without VMs or runtimes.
func TestDensityOnce(t *testing.T) {
	p := filepath.Join(t.TempDir(), "idle")
	if err := os.WriteFile(p, images.NeutralIdle(), 0o755); err != nil {
		t.Fatal(err)
	}
	c := &contender{name: "idle", kind: "process", args: []string{p}}
	o := Options{Density: 3, Timeout: time.Minute, Neutral: &images.Neutral{Key: "t"}}
	var r DensityResult
	if err := densityOnce(context.Background(), o, c, &r); err != nil {
		t.Fatal(err)
	}
	if r.StartAllMS <= 0 || r.PSSMiB <= 0 {
		t.Fatalf("density: %+v", r)
	}
	// One that never prints the marker fails within the limit, and is
	// stopped.
	o.Timeout = 300 * time.Millisecond
	if err := densityOnce(context.Background(), o, &contender{name: "sleep", args: []string{"sleep", "60"}}, &r); err == nil || !strings.Contains(err.Error(), "within") {
		t.Fatalf("no marker: %v", err)
	}
}

func TestDensityTable(t *testing.T) {
	rep := &Report{Density: []DensityResult{
		{Name: "ember", Kind: "vm", Where: "L1", N: 8, Available: true, StartAllMS: 9000, HostMiB: 30.5, PSSMiB: 40},
		{Name: "docker", Where: "L1", N: 8, Reason: "no Docker engine reachable here"},
	}}
	var b bytes.Buffer
	rep.Table(&b)
	for _, want := range []string{"ember", "9000", "30.5", "not available: docker (L1): no Docker engine"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("density table lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	if err := rep.SVG(&b); err != nil {
		t.Fatal(err)
	}
	if text, _ := svgText(t, &b); !strings.Contains(text, "30.5 MiB each, all 8 up in 9000 ms") {
		t.Errorf("density SVG text: %s", text)
	}
}

// svgText parses an SVG as XML (failing the test if it is not well-formed)
// and returns its texts joined by "|" and its number of rects.
func svgText(t *testing.T, r io.Reader) (string, int) {
	t.Helper()
	d := xml.NewDecoder(r)
	var texts []string
	rects := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return strings.Join(texts, "|"), rects
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v", err)
		}
		switch v := tok.(type) {
		case xml.StartElement:
			if v.Name.Local == "rect" {
				rects++
			}
		case xml.CharData:
			texts = append(texts, string(v))
		}
	}
}

// QEMU advises all its guest RAM for huge pages; ember's rows must ask for
// them too, or the two boot on different backings under a "madvise" host.
func TestEmberAsksForHugePages(t *testing.T) {
	n := &images.Neutral{Initrd: "/x", Bundle: "/b", Tar: "/t", Key: "k"}
	cs := contenders(Options{Runs: 1, VMs: true, Neutral: n, EmberInitrd: "/e", Self: "/ember", Kernel: "/k", MemoryMiB: 128})
	seen := 0
	for _, c := range cs {
		if !c.ember {
			continue
		}
		seen++
		if !slices.Contains(c.args, "--huge-pages") {
			t.Errorf("%s: %q lacks --huge-pages", c.name, c.args)
		}
	}
	if seen != 2 {
		t.Errorf("%d ember rows, want 2", seen)
	}
}

// TestMicrovmHasAnRTC: microvm under KVM has no RTC by default, and a
// stock kernel then spends seconds probing for one; the benchmark gives
// it one, as ember and q35 have.
func TestMicrovmHasAnRTC(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("SKIP: no qemu-system-x86_64 (Debian: qemu-system-x86): the QEMU rows have no command line")
	}
	n := &images.Neutral{Initrd: "/x", Bundle: "/b", Tar: "/t", Key: "k"}
	for _, c := range contenders(Options{Runs: 1, VMs: true, Neutral: n, Self: "/ember", Kernel: "/k", MemoryMiB: 128}) {
		if c.name == "qemu-microvm" {
			if i := slices.Index(c.args, "-M"); i < 0 || c.args[i+1] != "microvm,rtc=on" {
				t.Fatalf("microvm's command line %q, want -M microvm,rtc=on", c.args)
			}
			return
		}
	}
	t.Fatal("no qemu-microvm row")
}

// TestQEMUGetsEmbersCPU: where ember hides XSAVE from its guests, the QEMU
// rows hide it too, so no VM boots on a different CPU.
func TestQEMUGetsEmbersCPU(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("SKIP: no qemu-system-x86_64 (Debian: qemu-system-x86): the QEMU rows have no command line")
	}
	n := &images.Neutral{Initrd: "/x", Bundle: "/b", Tar: "/t", Key: "k"}
	for _, tc := range []struct{ env, want string }{
		{"", "host"},
		{"off", "host,-xsave,-xsavec,-xsaveopt,-xsaves,-avx,-avx2,-fma,-f16c,-avx512f,-pku"},
	} {
		t.Setenv(proto.GuestXSAVEEnv, tc.env)
		rows := 0
		for _, c := range contenders(Options{Runs: 1, VMs: true, Neutral: n, Self: "/ember", Kernel: "/k", MemoryMiB: 128}) {
			if !strings.HasPrefix(c.name, "qemu-") {
				continue
			}
			rows++
			if i := slices.Index(c.args, "-cpu"); i < 0 || c.args[i+1] != tc.want {
				t.Errorf("%s=%q: %s's command line %q, want -cpu %s", proto.GuestXSAVEEnv, tc.env, c.name, c.args, tc.want)
			}
		}
		if rows != 2 {
			t.Fatalf("%d QEMU rows, want 2", rows)
		}
	}
}
