package tap

import (
	"os"
	"testing"

	"github.com/vishvananda/netlink"
)

// Creating taps needs CAP_NET_ADMIN; where the test cannot, it says so.
func TestCreateAndRemove(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: creating a tap needs root")
	}
	tp, err := Open("embertest0", "")
	if err != nil {
		t.Skipf("SKIP: no tap here: %v", err)
	}
	if tp.Name() != "embertest0" {
		t.Fatalf("name %q", tp.Name())
	}
	if err := tp.SetOffload(true, true, false); err != nil {
		t.Fatal(err)
	}
	l, err := netlink.LinkByName("embertest0")
	if err != nil || l.Attrs().Flags&(1<<0) == 0 {
		t.Fatalf("link %v (%v): want it up", l, err)
	}
	tp.Close()
	if _, err := netlink.LinkByName("embertest0"); err == nil {
		t.Fatal("the tap ember created outlived it")
	}
}

func TestNotATap(t *testing.T) {
	if _, err := Open("lo", ""); err == nil {
		t.Fatal("attached to lo")
	}
}
