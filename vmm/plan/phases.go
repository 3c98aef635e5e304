package plan

import (
	"slices"
	"time"

	"github.com/ember-vmm/ember/vmm"
)

// Phase is one step of a run's timeline.
type Phase struct {
	Name string `json:"name"`
	// StartMS is when it began, from the process start; MS how long it
	// took; Exits the VM exits taken in it.
	StartMS float64 `json:"start_ms"`
	MS      float64 `json:"ms"`
	Exits   uint64  `json:"exits"`
}

// phaseAfter names the phase that follows mark.
func phaseAfter(mark string) string {
	switch mark {
	case "start":
		return "setup" // config, images, KVM VM, guest memory, devices, kernel loaded
	case markHandoff:
		return "exec" // ember-vmm loaded and its runtime started
	case markVMMStart:
		return "setup" // the plan read and checked, KVM VM, guest memory, devices, kernel loaded
	case vmm.MarkCreated:
		return "vcpu start" // goroutines and vCPU threads up to the first KVM_RUN
	case vmm.MarkFirstRun:
		return "kernel" // kernel entry to the init's start
	case vmm.MarkInit:
		return "init" // mounts, modules, the command's set-up
	case vmm.MarkCommand:
		return "command"
	case vmm.MarkCommandExit:
		return "power-off"
	case vmm.MarkEnded:
		return "teardown" // devices and vCPUs stopped, memory and descriptors released
	}
	return mark
}

// Marks of a run handed to ember-vmm: when ember executed it, and when
// its main began.
const (
	markHandoff  = "handoff"
	markVMMStart = "vmm start"
)

// phases turns a run's marks into its timeline, from started (or the
// first mark when zero) to down, when the machine was torn down with
// exits VM exits in all. pre are the marks before the VMM's own (the
// hand-off to ember-vmm), in order.
func phases(started time.Time, pre, marks []vmm.Mark, down time.Time, exits uint64) []Phase {
	if len(marks) == 0 {
		return nil
	}
	pts := append(slices.Clone(pre), marks...)
	if !started.IsZero() {
		pts = append([]vmm.Mark{{Name: "start", At: started}}, pts...)
	}
	base := pts[0].At
	pts = append(pts, vmm.Mark{Name: "down", At: down, Exits: exits})
	var out []Phase
	for i := 0; i+1 < len(pts); i++ {
		name := phaseAfter(pts[i].Name)
		if pts[i].Name == "start" && pts[i+1].Name == markHandoff {
			name = "resolve" // ember: config, images, the kernel checked
		}
		if pts[i].Name == vmm.MarkFirstRun && pts[i+1].Name != vmm.MarkInit {
			// Not ember's init: the guest ran on its own until it ended.
			name = "guest"
		}
		out = append(out, Phase{
			Name: name, StartMS: Millis(pts[i].At.Sub(base)), MS: Millis(pts[i+1].At.Sub(pts[i].At)),
			Exits: pts[i+1].Exits - min(pts[i].Exits, pts[i+1].Exits),
		})
	}
	return out
}
