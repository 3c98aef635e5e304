package plan

import (
	"os"

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
	ok := false
	scanSmaps(smaps, func(m smapsMapping) {
		ok = m.ok && m.path == exe && len(m.perms) > 1 && m.perms[1] == '-'
		if ok {
			out = append(out, [2]uintptr{uintptr(m.lo), uintptr(m.hi)})
		}
	}, func(key string, v uint64) {
		if ok && key == "Private_Dirty:" && v != 0 {
			out, ok = out[:len(out)-1], false
		}
	})
	return out
}
