package tests

import (
	"testing"
	"time"

	"github.com/ember-vmm/ember/vmm/nested"
)

// TestNestedAccel boots a guest through --accel nested from this host: the
// path a CI runner without /dev/kvm takes.
func TestNestedAccel(t *testing.T) {
	if env.inside {
		t.Skip("already inside the L1 guest")
	}
	if err := nested.Check(); err != nil {
		if env.skip != "" {
			t.Skipf("SKIP: %v", err)
		}
		t.Fatalf("nested path unavailable: %v", err)
	}
	r := ember(t, 5*time.Minute, "run", "--accel", "nested", "--json", "--cache-dir", env.cacheDir,
		"--", "sh", "-c", "ember-info; exit 42")
	wantCode(t, r, 42)
	wantOut(t, r, "kernel: "+image(t, "cloud-amd64").Version)
	rep := report(t, r)
	if rep["accel"] != "nested" || rep["outcome"] != "exited" {
		t.Fatalf("report accel=%v outcome=%v, want nested exited", rep["accel"], rep["outcome"])
	}
}
