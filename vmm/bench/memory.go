package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// sampleMemory reads /proc/PID/smaps: the process's resident memory, and
// for a VM (guestRAM > 0) the resident and private memory outside its
// guest RAM mapping, all in MiB; zeros when the process is gone.
func sampleMemory(pid int, guestRAM uint64) (rss, overhead, private float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, 0, 0
	}
	m := parseSmaps(b, guestRAM)
	if guestRAM == 0 {
		return kib(m.rss), 0, 0
	}
	return kib(m.rss), kib(m.rss - m.guestRSS), kib(m.private - m.guestPrivate)
}

func kib(k uint64) float64 { return float64(k) / 1024 }

// smapsTotals are sums over a process's mappings, in KiB.
type smapsTotals struct {
	rss, private           uint64
	guestRSS, guestPrivate uint64
}

// parseSmaps sums Rss and Private_* over all mappings, and separately over
// those that are guest RAM: anonymous mappings at least as large as
// guestRAM and at most 64 MiB larger (a VMM may pad the mapping to align
// it), the way Firecracker counts VMM overhead.
func parseSmaps(b []byte, guestRAM uint64) smapsTotals {
	var t smapsTotals
	guest := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if !strings.HasSuffix(f[0], ":") {
			// A mapping's header: start-end perms offset dev inode [path].
			guest = false
			lo, hi, ok := strings.Cut(f[0], "-")
			if !ok || guestRAM == 0 {
				continue
			}
			a, err1 := strconv.ParseUint(lo, 16, 64)
			z, err2 := strconv.ParseUint(hi, 16, 64)
			anon := len(f) < 6 || f[5] == "" || strings.HasPrefix(f[5], "[anon")
			if err1 == nil && err2 == nil && anon && z-a >= guestRAM && z-a <= guestRAM+64<<20 {
				guest = true
			}
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
			if guest {
				t.guestRSS += v
			}
		case "Private_Clean:", "Private_Dirty:":
			t.private += v
			if guest {
				t.guestPrivate += v
			}
		}
	}
	return t
}
