package plan

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
)

// Memory is a process's resident memory in MiB, and for a VMM the part
// beyond guest RAM (all, and private), which is how Firecracker counts
// VMM overhead.
type Memory struct {
	RSS, Overhead, Private float64
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
	return Memory{RSS: mib(t.rss), Overhead: mib(t.rss - t.guestRSS), Private: mib(t.private - t.guestPrivate)}, nil
}

// smapsTotals are sums over a process's mappings, in KiB.
type smapsTotals struct {
	rss, private           uint64
	guestRSS, guestPrivate uint64
}

// parseSmaps sums Rss and Private_* over all mappings, and separately over
// those guest says are guest RAM.
func parseSmaps(b []byte, guest GuestFunc) smapsTotals {
	var t smapsTotals
	isGuest := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if !strings.HasSuffix(f[0], ":") {
			// A mapping's header: start-end perms offset dev inode [path].
			isGuest = false
			lo, hi, ok := strings.Cut(f[0], "-")
			if !ok || guest == nil {
				continue
			}
			a, err1 := strconv.ParseUint(lo, 16, 64)
			z, err2 := strconv.ParseUint(hi, 16, 64)
			anon := len(f) < 6 || f[5] == "" || strings.HasPrefix(f[5], "[anon")
			isGuest = err1 == nil && err2 == nil && z > a && guest(a, z, anon)
			continue
		}
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "Rss:":
			t.rss += v
			if isGuest {
				t.guestRSS += v
			}
		case "Private_Clean:", "Private_Dirty:":
			t.private += v
			if isGuest {
				t.guestPrivate += v
			}
		}
	}
	return t
}
