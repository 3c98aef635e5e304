// Command sharecheck runs inside a guest on a host directory share and
// checks the POSIX behaviour test suites rely on; it prints one line per
// check and exits non-zero on the first failure. The host side then checks
// what it left behind.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) == 5 && os.Args[1] == "-bench" {
		var files, mib int
		fmt.Sscan(os.Args[3], &files)
		fmt.Sscan(os.Args[4], &mib)
		if err := bench(os.Args[2], files, mib); err != nil {
			fmt.Printf("FAIL bench: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) < 2 || len(os.Args) > 3 {
		fmt.Fprintln(os.Stderr, "usage: sharecheck DIR [FILES] | sharecheck -bench DIR FILES MIB")
		os.Exit(2)
	}
	dir := os.Args[1]
	if len(os.Args) == 3 {
		fmt.Sscan(os.Args[2], &manyCount)
	}
	for _, c := range []struct {
		name string
		f    func(string) error
	}{
		{"host file", hostFile},
		{"open-unlink-fstat", openUnlinkFstat},
		{"rename over", renameOver},
		{"mmap shared", mmapShared},
		{"O_APPEND", appendMode},
		{"timestamps", timestamps},
		{"large file", largeFile},
		{"many files", manyFiles},
		{"symlinks", symlinks},
		{"hard links", hardLinks},
	} {
		start := time.Now()
		if err := c.f(dir); err != nil {
			fmt.Printf("FAIL %s: %v\n", c.name, err)
			os.Exit(1)
		}
		fmt.Printf("ok %s (%s)\n", c.name, time.Since(start).Round(time.Millisecond))
	}
	fmt.Println("sharecheck: all passed")
}

func hostFile(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "from-host"))
	if err != nil {
		return err
	}
	if string(b) != "written on the host\n" {
		return fmt.Errorf("read %q", b)
	}
	return nil
}

func openUnlinkFstat(dir string) error {
	p := filepath.Join(dir, "unlinked")
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteString("still here"); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("fstat after unlink: %w", err)
	}
	if st.Size() != 10 {
		return fmt.Errorf("size %d after unlink, want 10", st.Size())
	}
	b := make([]byte, 10)
	if _, err := f.ReadAt(b, 0); err != nil || string(b) != "still here" {
		return fmt.Errorf("read after unlink: %q %v", b, err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		return fmt.Errorf("name still there: %v", err)
	}
	return nil
}

func renameOver(dir string) error {
	a, b := filepath.Join(dir, "rename-a"), filepath.Join(dir, "rename-b")
	if err := os.WriteFile(a, []byte("new"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(b, []byte("old"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(a, b); err != nil {
		return err
	}
	got, err := os.ReadFile(b)
	if err != nil || string(got) != "new" {
		return fmt.Errorf("after rename: %q %v", got, err)
	}
	if _, err := os.Stat(a); !os.IsNotExist(err) {
		return fmt.Errorf("source still there: %v", err)
	}
	return nil
}

func mmapShared(dir string) error {
	p := filepath.Join(dir, "mmapped")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(8192); err != nil {
		return err
	}
	m, err := unix.Mmap(int(f.Fd()), 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	copy(m[4096:], "written through mmap")
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		return fmt.Errorf("msync: %w", err)
	}
	if err := unix.Munmap(m); err != nil {
		return err
	}
	b := make([]byte, 20)
	if _, err := f.ReadAt(b, 4096); err != nil || string(b) != "written through mmap" {
		return fmt.Errorf("read back %q %v", b, err)
	}
	return nil
}

func appendMode(dir string) error {
	p := filepath.Join(dir, "appended")
	if err := os.WriteFile(p, []byte("0"), 0o644); err != nil {
		return err
	}
	f1, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer f1.Close()
	f2, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer f2.Close()
	for i := 1; i <= 4; i++ {
		f := f1
		if i%2 == 0 {
			f = f2
		}
		if _, err := fmt.Fprint(f, i); err != nil {
			return err
		}
	}
	got, err := os.ReadFile(p)
	if err != nil || string(got) != "01234" {
		return fmt.Errorf("content %q %v, want 01234", got, err)
	}
	return nil
}

func timestamps(dir string) error {
	p := filepath.Join(dir, "dated")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		return err
	}
	when := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	if err := os.Chtimes(p, when, when); err != nil {
		return err
	}
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !st.ModTime().Equal(when) {
		return fmt.Errorf("mtime %v, want %v", st.ModTime(), when)
	}
	before := time.Now().Add(-time.Minute)
	if err := os.WriteFile(filepath.Join(dir, "fresh"), []byte("x"), 0o644); err != nil {
		return err
	}
	if st, err := os.Stat(filepath.Join(dir, "fresh")); err != nil || st.ModTime().Before(before) {
		return fmt.Errorf("a new file's mtime is %v", st.ModTime())
	}
	return nil
}

func largeFile(dir string) error {
	p := filepath.Join(dir, "large")
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	defer f.Close()
	const off = 5 << 30 // past 32-bit offsets
	if _, err := f.WriteAt([]byte("end"), off); err != nil {
		return err
	}
	b := make([]byte, 3)
	if _, err := f.ReadAt(b, off); err != nil || string(b) != "end" {
		return fmt.Errorf("read at 5 GiB: %q %v", b, err)
	}
	if st, _ := f.Stat(); st.Size() != off+3 {
		return fmt.Errorf("size %d", st.Size())
	}
	return nil
}

// manyCount is how many files manyFiles makes in one directory.
var manyCount = 1000

func manyFiles(dir string) error {
	d := filepath.Join(dir, "many")
	// A second run (the tests retry a hung VM once) starts afresh.
	if err := os.RemoveAll(d); err != nil {
		return err
	}
	if err := os.Mkdir(d, 0o755); err != nil {
		return err
	}
	n := manyCount
	for i := range n {
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%04d", i)), nil, 0o644); err != nil {
			return err
		}
	}
	es, err := os.ReadDir(d)
	if err != nil {
		return err
	}
	if len(es) != n {
		return fmt.Errorf("%d entries, want %d", len(es), n)
	}
	return nil
}

func symlinks(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "sub", "target"), []byte("via link"), 0o644); err != nil {
		return err
	}
	l := filepath.Join(dir, "link")
	os.Remove(l)
	if err := os.Symlink("sub/target", l); err != nil {
		return err
	}
	if t, err := os.Readlink(l); err != nil || t != "sub/target" {
		return fmt.Errorf("readlink %q %v", t, err)
	}
	b, err := os.ReadFile(l)
	if err != nil || !bytes.Equal(b, []byte("via link")) {
		return fmt.Errorf("through the link: %q %v", b, err)
	}
	return nil
}

func hardLinks(dir string) error {
	a, b := filepath.Join(dir, "hard-a"), filepath.Join(dir, "hard-b")
	if err := os.WriteFile(a, []byte("one inode"), 0o644); err != nil {
		return err
	}
	os.Remove(b)
	if err := os.Link(a, b); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Stat(b, &st); err != nil {
		return err
	}
	if st.Nlink != 2 {
		return fmt.Errorf("nlink %d, want 2", st.Nlink)
	}
	return nil
}

// bench writes files small files (4 KiB, in 100 directories) and a file of
// mib MiB into dir, then reads them back after dropping the guest's
// caches, and prints "bench PHASE SECONDS" for each step.
func bench(dir string, files, mib int) error {
	tree := filepath.Join(dir, "bench")
	if err := os.RemoveAll(tree); err != nil {
		return err
	}
	small := bytes.Repeat([]byte("0123456789abcdef"), 256)
	name := func(i int) string { return filepath.Join(tree, fmt.Sprint(i%100), fmt.Sprint(i)) }
	step := func(phase string, f func() error) error {
		unix.Sync()
		// What is read must come through the share, not the page cache.
		_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o644)
		start := time.Now()
		if err := f(); err != nil {
			return fmt.Errorf("%s: %w", phase, err)
		}
		fmt.Printf("bench %s %.3f\n", phase, time.Since(start).Seconds())
		return nil
	}
	big := filepath.Join(dir, "bench-big")
	chunk := bytes.Repeat([]byte{0x5a}, 1<<20)
	for _, st := range []struct {
		phase string
		f     func() error
	}{
		{"small-write", func() error {
			for i := range files {
				if i < 100 {
					if err := os.MkdirAll(filepath.Dir(name(i)), 0o755); err != nil {
						return err
					}
				}
				if err := os.WriteFile(name(i), small, 0o644); err != nil {
					return err
				}
			}
			return nil
		}},
		{"small-read", func() error {
			for i := range files {
				b, err := os.ReadFile(name(i))
				if err != nil {
					return err
				}
				if len(b) != len(small) {
					return fmt.Errorf("%s: %d bytes", name(i), len(b))
				}
			}
			return nil
		}},
		{"big-write", func() error {
			f, err := os.Create(big)
			if err != nil {
				return err
			}
			defer f.Close()
			for range mib {
				if _, err := f.Write(chunk); err != nil {
					return err
				}
			}
			return f.Sync()
		}},
		{"big-read", func() error {
			f, err := os.Open(big)
			if err != nil {
				return err
			}
			defer f.Close()
			n, err := io.CopyBuffer(io.Discard, f, make([]byte, 1<<20))
			if err == nil && n != int64(mib)<<20 {
				err = fmt.Errorf("read %d bytes", n)
			}
			return err
		}},
	} {
		if err := step(st.phase, st.f); err != nil {
			return err
		}
	}
	return errors.Join(os.RemoveAll(tree), os.Remove(big))
}
