package main

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cgroup2Mount is where this host mounts the cgroup v2 tree, or "".
func cgroup2Mount(t *testing.T) string {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fs := strings.Fields(s.Text()); len(fs) > 2 && fs[2] == "cgroup2" {
			return fs[1]
		}
	}
	return ""
}

// deviceProgs is how many device filters are attached to the cgroup dir.
func deviceProgs(t *testing.T, dir string) uint32 {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	// BPF_PROG_QUERY: target_fd, attach_type, query_flags, attach_flags,
	// prog_ids, prog_cnt.
	var attr struct {
		target, typ, queryFlags, attachFlags uint32
		progIDs                              uint64
		progCnt                              uint32
		_                                    uint32
	}
	attr.target, attr.typ = uint32(fd), unix.BPF_CGROUP_DEVICE
	if _, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_QUERY, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr)); errno != 0 {
		t.Fatalf("BPF_PROG_QUERY %s: %v", dir, errno)
	}
	return attr.progCnt
}

func TestHoldCgroupKeys(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (cgroups and BPF)")
	}
	mnt := cgroup2Mount(t)
	if mnt == "" {
		t.Skip("no cgroup2 tree mounted on this host")
	}
	root := filepath.Join(mnt, "ember-test-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Skipf("cannot create a cgroup here: %v", err)
	}
	hold := filepath.Join(root, holdCgroupName)
	t.Cleanup(func() {
		// A cgroup with programs attached can be removed; they go with it.
		_ = os.Remove(hold)
		_ = os.Remove(root)
	})
	if err := holdCgroupKeys(root); err != nil {
		t.Fatal(err)
	}
	if n := deviceProgs(t, hold); n != 1 {
		t.Fatalf("%d device filters attached to %s, want 1", n, hold)
	}
}
