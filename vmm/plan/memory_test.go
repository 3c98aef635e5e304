package plan

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseSmaps(t *testing.T) {
	const ram = 512 << 20
	smaps := `00400000-00a00000 r-xp 00000000 08:01 123 /usr/bin/ember
Rss:                4000 kB
Private_Clean:       100 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
7f0000000000-7f0020000000 rw-p 00000000 00:00 0 
Rss:               30000 kB
Private_Clean:         0 kB
Private_Dirty:     30000 kB
Anonymous:         30000 kB
7f0020000000-7f0020100000 rw-p 00000000 00:00 0 
Rss:                 800 kB
Private_Dirty:       800 kB
Anonymous:           800 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  12 kB
Private_Dirty:        12 kB
Anonymous:            12 kB
`
	got, err := parseSmaps(strings.NewReader(smaps), GuestBySize(ram))
	if err != nil {
		t.Fatal(err)
	}
	want := smapsTotals{rss: 34812, private: 30912, anon: 30812, guestRSS: 30000, guestPrivate: 30000, guestAnon: 30000}
	if got != want {
		t.Fatalf("parseSmaps = %+v, want %+v", got, want)
	}
	// Exact ranges, as ember-vmm knows its own: the padded mapping is
	// not guest RAM by that rule.
	exact := func(lo, hi uint64, _ bool) bool { return lo == 0x7f0000000000 && hi == 0x7f0020000000 }
	if g, _ := parseSmaps(strings.NewReader(smaps), exact); g != want {
		t.Fatalf("exact ranges: %+v, want %+v", g, want)
	}
	// Without guest RAM nothing is set apart.
	if g, _ := parseSmaps(strings.NewReader(smaps), nil); g.guestRSS != 0 || g.rss != want.rss {
		t.Fatalf("no guest RAM: %+v", g)
	}
}

// TestScanSmapsLines: paths with spaces come whole, a line longer than
// the reader's buffer is cut without losing the next, and fields that are
// not numbers are left out.
func TestScanSmapsLines(t *testing.T) {
	long := strings.Repeat("x", 20000)
	smaps := "00400000-00401000 r-xp 00000000 08:01 123 /opt/my vm/ember-vmm\n" +
		"Rss:                   4 kB\n" +
		"VmFlags: rd ex mr mw me\n" +
		"00500000-00501000 r--p 00000000 08:01 124 /" + long + "\n" +
		"Rss:                   8 kB\n" +
		"zz-00601000 rw-p 00000000 00:00 0\n" +
		"Rss:                  16 kB"
	var paths []string
	var oks []bool
	var rss []uint64
	err := scanSmaps(strings.NewReader(smaps), func(m smapsMapping) {
		paths = append(paths, string(m.path))
		oks = append(oks, m.ok)
	}, func(key []byte, v uint64) {
		if string(key) != "Rss:" {
			t.Errorf("field %q = %d: not a number in the file", key, v)
		}
		rss = append(rss, v)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 3 || paths[0] != "/opt/my vm/ember-vmm" || !strings.HasPrefix(paths[1], "/xxx") || len(paths[1]) >= len(long) || paths[2] != "" {
		t.Fatalf("paths %.60q, want the spaced path whole, the long one cut, and none", paths)
	}
	if !oks[0] || !oks[1] || oks[2] {
		t.Fatalf("ranges parsed %v, want true, true, false", oks)
	}
	if len(rss) != 3 || rss[0] != 4 || rss[1] != 8 || rss[2] != 16 {
		t.Fatalf("Rss values %v, want [4 8 16]", rss)
	}
}

// TestParseSmapsAllocs: a smaps file of thousands of mappings (an
// executable split per page) is summed without an allocation per line,
// so measuring the VMM does not grow what is measured.
func TestParseSmapsAllocs(t *testing.T) {
	var b strings.Builder
	for i := range 2000 {
		fmt.Fprintf(&b, "%x-%x r-xp 00000000 08:01 123 /usr/bin/ember-vmm\nRss: 4 kB\nPrivate_Clean: 4 kB\nAnonymous: 0 kB\nVmFlags: rd ex\n", 0x400000+i*4096, 0x401000+i*4096)
	}
	s := b.String()
	var got smapsTotals
	allocs := testing.AllocsPerRun(5, func() {
		got, _ = parseSmaps(strings.NewReader(s), GuestBySize(1<<30))
	})
	if got.rss != 8000 || got.private != 8000 {
		t.Fatalf("totals %+v, want 8000 KiB resident and private", got)
	}
	if allocs > 10 {
		t.Fatalf("%v allocations for 2,000 mappings, want a fixed few", allocs)
	}
}

// TestReadSelfMemory: the rollup with the guest's resident KiB set apart
// gives what summing every mapping of smaps gives, and never less than
// nothing.
func TestReadSelfMemory(t *testing.T) {
	all, err := ReadMemory("/proc/self/smaps", nil)
	if err != nil {
		t.Fatal(err)
	}
	self, err := readSelfMemory(0)
	if err != nil {
		t.Fatal(err)
	}
	if d := self.RSS - all.RSS; d < -1 || d > 1 || self.Overhead != self.RSS {
		t.Fatalf("rollup %+v against smaps %+v: want the same within 1 MiB, and no guest RAM set apart", self, all)
	}
	g, err := readSelfMemory(4096)
	if err != nil {
		t.Fatal(err)
	}
	if d := g.RSS - g.Overhead; d < 3.99 || d > 4.01 || g.Private > g.RSS-3.99 {
		t.Fatalf("4 MiB of guest RAM set apart: %+v", g)
	}
	if huge, _ := readSelfMemory(1 << 40); huge.Overhead != 0 || huge.Private != 0 || huge.Anon != 0 {
		t.Fatalf("more guest RAM than the process holds: %+v, want 0 beyond it", huge)
	}
}
