package netsetup

import (
	"bytes"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ember-vmm/ember/vmm/tap"
)

// testTap creates the tap name and takes it over as the VMM does.
// Creating taps needs CAP_NET_ADMIN; where the test cannot, it says so.
func testTap(t *testing.T, name string) *tap.Tap {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: creating a tap needs root")
	}
	fd, got, err := OpenTap(name, "")
	if err != nil {
		t.Skipf("SKIP: no tap here: %v", err)
	}
	if got != name {
		t.Fatalf("OpenTap(%q) named it %q", name, got)
	}
	tp, err := tap.New(fd)
	if err != nil {
		t.Fatal(err)
	}
	return tp
}

func TestCreateAndRemove(t *testing.T) {
	const name = "embertest0"
	tp := testTap(t, name)
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

// A frame written in pieces reaches the interface whole, as the host sees
// it: virtio-net transmits from guest RAM this way.
func TestWriteVec(t *testing.T) {
	tp := testTap(t, "embertest1")
	defer tp.Close()
	l, err := netlink.LinkByName("embertest1")
	if err != nil {
		t.Fatal(err)
	}
	const etherType = 0x88b5 // local experimental: the host's stack ignores it
	s, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(etherType)))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	if err := unix.Bind(s, &unix.SockaddrLinklayer{Protocol: htons(etherType), Ifindex: l.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	_ = unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	frame := make([]byte, 200)
	copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x06, 0, 0, 0, 0, 1, etherType >> 8, etherType & 0xff})
	for i := 14; i < len(frame); i++ {
		frame[i] = byte(i)
	}
	hdr := make([]byte, 12) // virtio-net header: no offloads
	if n, err := tp.WriteVec([][]byte{hdr, frame[:9], frame[9:100], frame[100:]}); err != nil || n != len(hdr)+len(frame) {
		t.Fatalf("WriteVec: %d, %v", n, err)
	}
	got := make([]byte, 1500)
	n, _, err := unix.Recvfrom(s, got, 0)
	if err != nil {
		t.Fatalf("the frame did not reach %s: %v", l.Attrs().Name, err)
	}
	if !bytes.Equal(got[:n], frame) {
		t.Fatalf("got %d bytes %x, want %x", n, got[:n], frame)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
