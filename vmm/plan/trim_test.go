package plan

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestTrimmable(t *testing.T) {
	smaps := `00400000-005da000 r-xp 00000000 00:19 1955947                           /opt/ember/ember-vmm
Rss:                1888 kB
Private_Dirty:         0 kB
005da000-00829000 r--p 001da000 00:19 1955947                           /opt/ember/ember-vmm
Rss:                2224 kB
Private_Dirty:         0 kB
00829000-0083d000 rw-p 00429000 00:19 1955947                           /opt/ember/ember-vmm
Rss:                  80 kB
Private_Dirty:        80 kB
00900000-00901000 r--p 00000000 00:19 1955947                           /opt/ember/ember-vmm
Private_Dirty:         4 kB
0083d000-00874000 rw-p 00000000 00:00 0
Rss:                  80 kB
7f0000000000-7f0000001000 r--p 00000000 00:19 77                          /opt/ember/ember-vmm.old
Private_Dirty:         0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
`
	got := trimmable(strings.NewReader(smaps), "/opt/ember/ember-vmm")
	want := [][2]uintptr{{0x400000, 0x5da000}, {0x5da000, 0x829000}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("trimmable = %x, want %x (text and read-only data only: not writable, not modified, not another file)", got, want)
	}
}

// TestAfterBoot: the trim runs once the boot is over, not before, and
// never when the VM ends first; stop returns either way.
func TestAfterBoot(t *testing.T) {
	var n atomic.Int32
	booted := make(chan struct{})
	stop := afterBoot(booted, func() { n.Add(1) })
	time.Sleep(20 * time.Millisecond)
	if n.Load() != 0 {
		t.Fatal("trimmed before the boot was over")
	}
	close(booted)
	deadline := time.Now().Add(5 * time.Second)
	for n.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	stop()
	if n.Load() != 1 {
		t.Fatalf("%d trims after the boot, want 1", n.Load())
	}
	stop = afterBoot(make(chan struct{}), func() { n.Add(1) })
	stop()
	if n.Load() != 1 {
		t.Fatal("trimmed for a guest that never booted")
	}
}

// TestSplitPages: a read-only file mapping of eight pages becomes eight
// mappings, every byte still readable and unchanged.
func TestSplitPages(t *testing.T) {
	pg := os.Getpagesize()
	data := make([]byte, 8*pg)
	for i := range data {
		data[i] = byte(i / pg)
	}
	path := filepath.Join(t.TempDir(), "text")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, len(data), unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	lo := uintptr(unsafe.Pointer(&m[0]))
	mappings := func() int {
		b, err := os.ReadFile("/proc/self/maps")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), " "+path+"\n")
	}
	if n := mappings(); n != 1 {
		t.Fatalf("%d mappings of the file before the split, want 1", n)
	}
	splitPages([][2]uintptr{{lo, lo + uintptr(len(data))}})
	if n := mappings(); n != 8 {
		t.Fatalf("%d mappings of the file after the split, want one per page (8)", n)
	}
	trim([][2]uintptr{{lo, lo + uintptr(len(data))}})
	if !bytes.Equal(m, data) {
		t.Fatal("the split and trimmed mapping reads back different bytes")
	}
}
