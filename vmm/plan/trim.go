package plan

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// trimStartup unmaps this process's view of its own program text and
// read-only data just before the VM runs, and then, while the guest
// starts, splits them into a mapping per page (splitPages). Setting a
// machine up runs code a running VM never runs again (plan decoding,
// kernel loading, table building), and the kernel's fault-around has
// mapped far more of the file than ran. The pages stay in the page cache,
// shared with every other ember-vmm; those the running VM needs come back
// on a minor fault, without I/O, one page per fault. Writable mappings
// are never touched, and a read-only one with private (modified) pages is
// left alone, since dropping those would lose them.
// It returns the ranges it dropped, for trim to drop again later without
// reading smaps (read-only mappings of the executable do not change).
func trimStartup() [][2]uintptr {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return nil
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return nil
	}
	ranges := trimmable(f, exe)
	f.Close()
	trim(ranges)
	// Splitting takes a thousand calls (12 ms in a nested L1): off the
	// boot's path, while the guest starts.
	go func() {
		splitPages(ranges)
		trim(ranges)
	}()
	return ranges
}

// splitPages makes every page of the ranges a mapping of its own, by
// advising every other page against huge pages (which changes nothing
// else for a read-only file mapping). The kernel maps up to 64 KiB of
// cached file pages around each fault (fault-around), and no mapping can
// opt out, but it never crosses a mapping's end: split, a fault maps the
// one page touched. Measured in a nested L1, this halved what ember-vmm
// keeps resident once booted (4.0-4.2 to 2.1-2.3 MiB), for about 1,200
// mappings and, there, 12 ms of madvise calls. Splitting stops at the
// first refusal (the process's mapping limit).
func splitPages(ranges [][2]uintptr) {
	pg := uintptr(os.Getpagesize())
	for _, r := range ranges {
		for a := r[0]; a+pg <= r[1]; a += 2 * pg {
			if _, _, e := unix.Syscall(unix.SYS_MADVISE, a, pg, unix.MADV_NOHUGEPAGE); e != 0 {
				return
			}
		}
	}
}

// trim drops this process's view of the ranges, which trimStartup found.
func trim(ranges [][2]uintptr) {
	for _, r := range ranges {
		_, _, _ = unix.Syscall(unix.SYS_MADVISE, r[0], r[1]-r[0], unix.MADV_DONTNEED)
	}
}

// trimmable returns the [start, end) ranges in smaps that map file exe,
// are not writable and hold no private dirty pages.
func trimmable(smaps io.Reader, exe string) [][2]uintptr {
	var out [][2]uintptr
	ok := false
	_ = scanSmaps(smaps, func(m smapsMapping) {
		ok = m.ok && string(m.path) == exe && len(m.perms) > 1 && m.perms[1] == '-'
		if ok {
			out = append(out, [2]uintptr{uintptr(m.lo), uintptr(m.hi)})
		}
	}, func(key []byte, v uint64) {
		if ok && string(key) == "Private_Dirty:" && v != 0 {
			out, ok = out[:len(out)-1], false
		}
	})
	return out
}

// afterBoot runs trim once booted is closed: what only a booting guest
// makes the VMM run (CPUID and MSR exits, drivers setting up devices, the
// probes of a starting kernel, ember's init reporting) is not run again,
// so a VM that goes on running, a service or an idle VM among many, does
// not keep it resident. stop ends the wait, or waits for a trim under
// way.
func afterBoot(booted <-chan struct{}, trim func()) (stop func()) {
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		select {
		case <-booted:
			trim()
		case <-done:
		}
	}()
	return func() { close(done); <-finished }
}
