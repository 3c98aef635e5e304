package hostdir

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestValidName(t *testing.T) {
	for name, want := range map[string]bool{"a": true, "a.b": true, "": false, ".": false, "..": false,
		"a/b": false, "a\x00": false, string(make([]byte, 256)): false} {
		if ValidName(name) != want {
			t.Errorf("ValidName(%q) = %v", name, !want)
		}
	}
}

func TestOpenBeneath(t *testing.T) {
	outside, dir := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o600)
	os.Symlink(outside, filepath.Join(dir, "link"))
	root, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(root)
	fd, err := OpenBeneath(root, "file", unix.O_PATH, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	for _, name := range []string{"link", "link/secret", "../" + filepath.Base(outside), outside + "/secret"} {
		if fd, err := OpenBeneath(root, name, unix.O_RDONLY, 0); err == nil {
			unix.Close(fd)
			t.Errorf("opened %q outside the directory", name)
		}
	}
}

func TestBudget(t *testing.T) {
	b := &Budget{max: 3}
	if !b.Take(2) || b.Take(2) || !b.Take(1) || b.Take(1) {
		t.Fatal("the budget did not hold at its limit")
	}
	b.Put(3)
	if b.Held() != 0 || b.Refused.Load() != 2 {
		t.Fatalf("held %d, refused %d", b.Held(), b.Refused.Load())
	}
}

func TestSafeToOpen(t *testing.T) {
	if !SafeToOpen(unix.S_IFREG) || !SafeToOpen(unix.S_IFDIR) || SafeToOpen(unix.S_IFIFO) || SafeToOpen(unix.S_IFCHR) || SafeToOpen(unix.S_IFSOCK) {
		t.Fatal("SafeToOpen")
	}
	if MknodAllowed(unix.S_IFCHR) || MknodAllowed(unix.S_IFBLK) || !MknodAllowed(unix.S_IFIFO) {
		t.Fatal("MknodAllowed")
	}
}
