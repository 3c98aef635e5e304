package plan

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// trimStartup unmaps this process's view of its own program text and
// read-only data just before the VM runs. Setting a machine up runs code
// a running VM never runs again (plan decoding, kernel loading, table
// building), and the kernel's fault-around has mapped far more of the file
// than ran: measured with a 4 KiB fault-around, a run touches about half
// of what is resident. The pages stay in the page cache, shared with every
// other ember-vmm; those the running VM needs come back on a minor fault,
// without I/O. Writable mappings are never touched, and a read-only one
// with private (modified) pages is left alone, since dropping those would
// lose them.
func trimStartup() {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return
	}
	for _, r := range trimmable(b, exe) {
		_, _, _ = unix.Syscall(unix.SYS_MADVISE, r[0], r[1]-r[0], unix.MADV_DONTNEED)
	}
}

// trimmable returns the [start, end) ranges in smaps that map file exe,
// are not writable and hold no private dirty pages.
func trimmable(smaps []byte, exe string) [][2]uintptr {
	var out [][2]uintptr
	var cur [2]uintptr
	ok := false
	done := func() {
		if ok {
			out = append(out, cur)
		}
		ok = false
	}
	sc := bufio.NewScanner(bytes.NewReader(smaps))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if !strings.HasSuffix(f[0], ":") {
			// A mapping's header: start-end perms offset dev inode [path].
			done()
			lo, hi, found := strings.Cut(f[0], "-")
			if !found || len(f) < 6 || f[5] != exe || len(f[1]) < 2 || f[1][1] != '-' {
				continue
			}
			l, err1 := strconv.ParseUint(lo, 16, 64)
			h, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 != nil || err2 != nil || h <= l {
				continue
			}
			cur, ok = [2]uintptr{uintptr(l), uintptr(h)}, true
			continue
		}
		if ok && f[0] == "Private_Dirty:" && len(f) >= 2 && f[1] != "0" {
			ok = false
		}
	}
	done()
	return out
}
