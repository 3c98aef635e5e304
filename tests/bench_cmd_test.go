package tests

import (
	"encoding/json"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNestedBench: ember bench, as a user runs it here, measures ember,
// QEMU and the OCI runtimes on one neutral root file system and reports
// every contender, with numbers or a reason, as JSON and as a chart. On a
// host without KVM the VMs and runtimes run inside one nested L1 guest.
func TestNestedBench(t *testing.T) {
	needNested(t)
	svg := filepath.Join(t.TempDir(), "bench.svg")
	r := ember(t, 20*time.Minute, "bench", "-n", "1", "--cache-dir", env.cacheDir, "--json", "--svg", svg)
	wantCode(t, r, 0)
	var rep struct {
		Accel   string `json:"accel"`
		Results []struct {
			Name, Kind, Where, Reason string
			Available                 bool
			Ready                     *struct{ Median float64 } `json:"ready_ms"`
			Exit                      *struct{ Median float64 } `json:"exit_ms"`
			Memory                    *struct {
				Overhead float64 `json:"overhead_mib"`
			}
		} `json:"results"`
	}
	i := strings.Index(r.stdout, "{")
	if i < 0 || json.Unmarshal([]byte(r.stdout[i:]), &rep) != nil {
		t.Fatalf("no JSON report:\n%s", r.stdout)
	}
	seen := map[string]bool{}
	for _, x := range rep.Results {
		seen[x.Name] = true
		switch {
		case !x.Available && x.Reason == "":
			t.Errorf("%s (%s) unavailable without a reason", x.Name, x.Where)
		case x.Available && (x.Ready == nil || x.Ready.Median <= 0 || x.Exit.Median < x.Ready.Median):
			t.Errorf("%s (%s): times %+v %+v", x.Name, x.Where, x.Ready, x.Exit)
		}
		if x.Name == "ember" {
			if !x.Available {
				t.Errorf("ember did not run: %s", x.Reason)
			} else if x.Memory == nil || x.Memory.Overhead <= 0 {
				t.Errorf("ember's VMM overhead not measured: %+v", x.Memory)
			}
		}
		if x.Name == "qemu-microvm" && !x.Available {
			t.Errorf("QEMU microvm did not run (QEMU is installed for the nested path): %s", x.Reason)
		}
	}
	for _, n := range []string{"ember", "ember (ember-init)", "qemu-microvm", "qemu-q35", "crun", "runc", "docker"} {
		if !seen[n] {
			t.Errorf("no row for %s", n)
		}
	}
	f, err := os.Open(svg)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := xml.NewDecoder(f)
	var text strings.Builder
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("the SVG is not well-formed: %v", err)
		}
		if c, ok := tok.(xml.CharData); ok {
			text.Write(c)
		}
	}
	if !strings.Contains(text.String(), "ember [") {
		t.Errorf("the SVG has no ember bar: %s", text.String())
	}
}
