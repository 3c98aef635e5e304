package vmm

import (
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ember-vmm/ember/vmm/eventfd"
)

// TestLevelLineResample drives a level-triggered line's resampler the way
// KVM does: each EOI signals the resample eventfd, and the line is raised
// again exactly while the device still has something pending. Closing the
// resample eventfd ends the resampler.
func TestLevelLineResample(t *testing.T) {
	efd, err := eventfd.New()
	if err != nil {
		t.Fatal(err)
	}
	defer efd.Close()
	rfd, err := eventfd.New()
	if err != nil {
		t.Fatal(err)
	}
	var pending atomic.Bool
	l := &irqLine{gsi: 5, efd: efd, rfd: rfd, pending: pending.Load, log: slog.New(slog.DiscardHandler)}
	done := make(chan error, 1)
	go func() { done <- l.resample() }()

	raised := make(chan uint64, 10)
	go func() {
		for {
			n, err := efd.Wait()
			if err != nil {
				return
			}
			raised <- n
		}
	}()
	eoi := func() {
		if err := rfd.Signal(); err != nil {
			t.Fatal(err)
		}
	}
	pending.Store(true)
	eoi()
	select {
	case <-raised:
	case <-time.After(5 * time.Second):
		t.Fatal("an EOI with work pending did not raise the line again")
	}
	pending.Store(false)
	eoi()
	select {
	case n := <-raised:
		t.Fatalf("the line was raised (%d) with nothing pending", n)
	case <-time.After(200 * time.Millisecond):
	}
	l.stopResample()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("resample ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the resampler did not end when its eventfd closed")
	}
}
