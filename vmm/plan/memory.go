package plan

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
)

// Memory is a process's resident memory in MiB, and for a VMM the part
// beyond guest RAM, which is how Firecracker counts VMM overhead: all of
// it, the private part (smaps counts a page private while no other
// process maps it, the executable's too) and the anonymous part (heap,
// stacks, written data: what no other VMM could ever share).
type Memory struct {
	RSS, Overhead, Private, Anon float64
}

// GuestFunc says whether the mapping [lo, hi) is guest RAM; anon is
// whether it is anonymous.
type GuestFunc func(lo, hi uint64, anon bool) bool

// GuestBySize takes the anonymous mappings at least ram bytes long and
// at most 64 MiB longer (a VMM may pad the mapping to align it) for guest
// RAM: how another process's guest RAM is found.
func GuestBySize(ram uint64) GuestFunc {
	return func(lo, hi uint64, anon bool) bool { return anon && hi-lo >= ram && hi-lo <= ram+64<<20 }
}

// ReadMemory reads a smaps file (/proc/PID/smaps); guest may be nil.
func ReadMemory(path string, guest GuestFunc) (Memory, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Memory{}, err
	}
	t := parseSmaps(b, guest)
	mib := func(k uint64) float64 { return float64(k) / 1024 }
	return Memory{RSS: mib(t.rss), Overhead: mib(t.rss - t.guestRSS), Private: mib(t.private - t.guestPrivate), Anon: mib(t.anon - t.guestAnon)}, nil
}

// smapsTotals are sums over a process's mappings, in KiB.
type smapsTotals struct {
	rss, private, anon                uint64
	guestRSS, guestPrivate, guestAnon uint64
}

// parseSmaps sums Rss, Private_* and Anonymous over all mappings, and
// separately over those guest says are guest RAM.
func parseSmaps(b []byte, guest GuestFunc) smapsTotals {
	var t smapsTotals
	isGuest := false
	add := func(all, inGuest *uint64, v uint64) {
		*all += v
		if isGuest {
			*inGuest += v
		}
	}
	scanSmaps(b, func(m smapsMapping) {
		anon := m.path == "" || strings.HasPrefix(m.path, "[anon")
		isGuest = m.ok && guest != nil && guest(m.lo, m.hi, anon)
	}, func(key string, v uint64) {
		switch key {
		case "Rss:":
			add(&t.rss, &t.guestRSS, v)
		case "Private_Clean:", "Private_Dirty:":
			add(&t.private, &t.guestPrivate, v)
		case "Anonymous:":
			add(&t.anon, &t.guestAnon, v)
		}
	})
	return t
}

// smapsMapping is a mapping's header line in a smaps file: start-end
// perms offset dev inode [path].
type smapsMapping struct {
	lo, hi      uint64
	perms, path string
	ok          bool // the range parsed and is not empty
}

// scanSmaps calls header for each mapping and field for each "Key: value"
// line under it (values in the file's units, KiB).
func scanSmaps(b []byte, header func(smapsMapping), field func(key string, v uint64)) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if !strings.HasSuffix(f[0], ":") {
			var m smapsMapping
			if len(f) > 1 {
				m.perms = f[1]
			}
			if len(f) > 5 {
				m.path = f[5]
			}
			if lo, hi, ok := strings.Cut(f[0], "-"); ok {
				a, err1 := strconv.ParseUint(lo, 16, 64)
				z, err2 := strconv.ParseUint(hi, 16, 64)
				m.lo, m.hi, m.ok = a, z, err1 == nil && err2 == nil && z > a
			}
			header(m)
			continue
		}
		if len(f) < 2 {
			continue
		}
		if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			field(f[0], v)
		}
	}
}
