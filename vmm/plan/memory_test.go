package plan

import "testing"

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
	got := parseSmaps([]byte(smaps), GuestBySize(ram))
	want := smapsTotals{rss: 34812, private: 30912, anon: 30812, guestRSS: 30000, guestPrivate: 30000, guestAnon: 30000}
	if got != want {
		t.Fatalf("parseSmaps = %+v, want %+v", got, want)
	}
	// Exact ranges, as ember-vmm knows its own: the padded mapping is
	// not guest RAM by that rule.
	exact := func(lo, hi uint64, _ bool) bool { return lo == 0x7f0000000000 && hi == 0x7f0020000000 }
	if g := parseSmaps([]byte(smaps), exact); g != want {
		t.Fatalf("exact ranges: %+v, want %+v", g, want)
	}
	// Without guest RAM nothing is set apart.
	if g := parseSmaps([]byte(smaps), nil); g.guestRSS != 0 || g.rss != want.rss {
		t.Fatalf("no guest RAM: %+v", g)
	}
}
