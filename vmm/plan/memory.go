package plan

import (
	"bufio"
	"bytes"
	"io"
	"os"
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
// It streams the file through a small buffer and keeps no line: a VMM
// whose executable is split into a mapping per page (splitPages) has a
// smaps file of a megabyte or more, and reading its own must neither take
// long nor grow the heap it measures.
func ReadMemory(path string, guest GuestFunc) (Memory, error) {
	t, err := readTotals(path, guest)
	if err != nil {
		return Memory{}, err
	}
	return t.memory(), nil
}

// readSelfMemory is ReadMemory for this process, whose guest RAM (private
// anonymous memory) has guestKiB resident: smaps_rollup has the kernel
// sum every mapping, so the thousand mappings of a split executable cost
// nothing to read.
func readSelfMemory(guestKiB uint64) (Memory, error) {
	t, err := readTotals("/proc/self/smaps_rollup", nil)
	if err != nil {
		return Memory{}, err
	}
	t.guestRSS, t.guestPrivate, t.guestAnon = guestKiB, guestKiB, guestKiB
	return t.memory(), nil
}

func readTotals(path string, guest GuestFunc) (smapsTotals, error) {
	f, err := os.Open(path)
	if err != nil {
		return smapsTotals{}, err
	}
	defer f.Close()
	return parseSmaps(f, guest)
}

// smapsTotals are sums over a process's mappings, in KiB.
type smapsTotals struct {
	rss, private, anon                uint64
	guestRSS, guestPrivate, guestAnon uint64
}

// memory is t in MiB, guest RAM set apart.
func (t smapsTotals) memory() Memory {
	beyond := func(all, guest uint64) float64 {
		if guest > all { // sampled at another instant
			return 0
		}
		return float64(all-guest) / 1024
	}
	return Memory{RSS: float64(t.rss) / 1024, Overhead: beyond(t.rss, t.guestRSS), Private: beyond(t.private, t.guestPrivate), Anon: beyond(t.anon, t.guestAnon)}
}

// parseSmaps sums Rss, Private_* and Anonymous over all mappings, and
// separately over those guest says are guest RAM.
func parseSmaps(r io.Reader, guest GuestFunc) (smapsTotals, error) {
	var t smapsTotals
	isGuest := false
	add := func(all, inGuest *uint64, v uint64) {
		*all += v
		if isGuest {
			*inGuest += v
		}
	}
	err := scanSmaps(r, func(m smapsMapping) {
		anon := len(m.path) == 0 || bytes.HasPrefix(m.path, []byte("[anon"))
		isGuest = m.ok && guest != nil && guest(m.lo, m.hi, anon)
	}, func(key []byte, v uint64) {
		switch string(key) {
		case "Rss:":
			add(&t.rss, &t.guestRSS, v)
		case "Private_Clean:", "Private_Dirty:":
			add(&t.private, &t.guestPrivate, v)
		case "Anonymous:":
			add(&t.anon, &t.guestAnon, v)
		}
	})
	return t, err
}

// smapsMapping is a mapping's header line in a smaps file: start-end
// perms offset dev inode [path]. perms and path point into the reader's
// buffer and are only valid during the call.
type smapsMapping struct {
	lo, hi      uint64
	perms, path []byte
	ok          bool // the range parsed and is not empty
}

// scanSmaps calls header for each mapping and field for each "Key: value"
// line under it (values in the file's units, KiB). A line longer than its
// buffer (a path of thousands of bytes) is cut there.
func scanSmaps(r io.Reader, header func(smapsMapping), field func(key []byte, v uint64)) error {
	br := bufio.NewReaderSize(r, 8<<10)
	for {
		line, err := br.ReadSlice('\n')
		full := err == bufio.ErrBufferFull
		if len(line) > 0 {
			scanSmapsLine(line, header, field)
		}
		for full { // the rest of a cut line
			_, err = br.ReadSlice('\n')
			full = err == bufio.ErrBufferFull
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func scanSmapsLine(line []byte, header func(smapsMapping), field func(key []byte, v uint64)) {
	first, rest := nextField(line)
	if len(first) == 0 {
		return
	}
	if first[len(first)-1] == ':' {
		if v, _ := nextField(rest); len(v) > 0 {
			if n, ok := parseUint(v, 10); ok {
				field(first, n)
			}
		}
		return
	}
	var m smapsMapping
	m.perms, rest = nextField(rest)
	for range 3 { // offset, device, inode
		_, rest = nextField(rest)
	}
	m.path = bytes.TrimSpace(rest)
	if lo, hi, ok := bytes.Cut(first, []byte("-")); ok {
		a, ok1 := parseUint(lo, 16)
		z, ok2 := parseUint(hi, 16)
		m.lo, m.hi, m.ok = a, z, ok1 && ok2 && z > a
	}
	header(m)
}

// nextField returns the first space-separated field of b and what follows.
func nextField(b []byte) (f, rest []byte) {
	i := 0
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	j := i
	for j < len(b) && !isSpace(b[j]) {
		j++
	}
	return b[i:j], b[j:]
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// parseUint parses b in base 10 or 16 without allocating; false on
// anything else or overflow. By hand because strconv.ParseUint takes a
// string, and the conversion escapes into its error: tried here, it made
// 4,000 allocations for 2,000 mappings (TestParseSmapsAllocs).
func parseUint(b []byte, base uint64) (uint64, bool) {
	if len(b) == 0 || len(b) > 16 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		var d uint64
		switch {
		case c >= '0' && c <= '9':
			d = uint64(c - '0')
		case base == 16 && c >= 'a' && c <= 'f':
			d = uint64(c-'a') + 10
		case base == 16 && c >= 'A' && c <= 'F':
			d = uint64(c-'A') + 10
		default:
			return 0, false
		}
		n = n*base + d
	}
	return n, true
}
