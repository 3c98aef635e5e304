package launch

import (
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ember-vmm/ember/vmm"
	"github.com/ember-vmm/ember/vmm/plan"
)

// A plan whose second interface cannot be opened fails naming it, and the
// tap made for the first one is gone: nothing is left behind.
func TestOpenNetworkLeavesNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: creating a tap needs root")
	}
	p := &plan.Plan{Nets: []vmm.Net{{Tap: "embertest1"}, {Tap: "lo"}}}
	err := OpenNetwork(p)
	if err == nil || !strings.HasPrefix(err.Error(), "net 1:") {
		t.Fatalf("err = %v, want one about net 1", err)
	}
	if _, err := netlink.LinkByName("embertest1"); err == nil {
		t.Fatal("the tap made for net 0 outlived the failed plan")
	}
}

// The descriptor an opened interface gets is in the plan for the VMM.
func TestOpenNetworkFillsDescriptors(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: creating a tap needs root")
	}
	p := &plan.Plan{Nets: []vmm.Net{{Tap: "embertest2"}}}
	if err := OpenNetwork(p); err != nil {
		t.Skipf("SKIP: no tap here: %v", err)
	}
	defer os.NewFile(uintptr(p.Nets[0].FD), "tap").Close()
	if p.Nets[0].FD <= 2 || p.Nets[0].Tap != "embertest2" {
		t.Fatalf("net = %+v, want an open descriptor for embertest2", p.Nets[0])
	}
	if _, err := netlink.LinkByName("embertest2"); err != nil {
		t.Fatalf("tap: %v", err)
	}
}
