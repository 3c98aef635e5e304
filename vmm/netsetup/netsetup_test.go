package netsetup

import (
	"os"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ember-vmm/ember/vmm/tap"
)

// Creating taps needs CAP_NET_ADMIN; where the test cannot, it says so.
func TestCreateAndRemove(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: creating a tap needs root")
	}
	fd, name, err := OpenTap("embertest0", "")
	if err != nil {
		t.Skipf("SKIP: no tap here: %v", err)
	}
	if name != "embertest0" {
		t.Fatalf("name %q", name)
	}
	tp, err := tap.New(fd)
	if err != nil {
		t.Fatal(err)
	}
	if tp.Name() != name {
		t.Fatalf("tap.New: name %q, want %q", tp.Name(), name)
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
	if _, _, err := OpenTap("lo", ""); err == nil {
		t.Fatal("attached to lo")
	}
}

// The VMM takes a descriptor from its plan: one that is not a tap is
// refused, not served.
func TestNewRefusesOtherDescriptors(t *testing.T) {
	f, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := tap.New(int(f.Fd())); err == nil {
		t.Fatal("tap.New took /dev/null")
	}
}
