package images

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// fileSum is what the cache records of a file it wrote: its size, SHA-256
// and modification time.
type fileSum struct {
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256"`
	MtimeNS int64  `json:"mtime_ns"`
}

func sumFile(path string) (fileSum, error) {
	f, err := os.Open(path)
	if err != nil {
		return fileSum{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fileSum{}, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fileSum{}, err
	}
	return fileSum{Size: st.Size(), SHA256: hex.EncodeToString(h.Sum(nil)), MtimeNS: st.ModTime().UnixNano()}, nil
}

// verifyFile checks path against want. The size is always checked; the
// checksum when full is set or the file's modification time is not the
// recorded one (so every run stays cheap, and a file changed by anyone
// but the cache is caught).
func verifyFile(path string, want fileSum, full bool) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() || st.Size() != want.Size {
		return fmt.Errorf("%s: %d bytes, the cache wrote %d", path, st.Size(), want.Size)
	}
	if !full && st.ModTime().UnixNano() == want.MtimeNS {
		return nil
	}
	got, err := sumFile(path)
	if err != nil {
		return err
	}
	if got.SHA256 != want.SHA256 {
		return fmt.Errorf("%s: checksum %s, the cache wrote %s", path, got.SHA256[:12], want.SHA256[:12])
	}
	return nil
}

// Single-file entries (initramfs images, vmlinux) have their sum beside
// them, in <file>.sum.
func sumPath(path string) string { return path + ".sum" }

// settleAndSum sets path's modification time a little in the past and
// returns its sum. File times come from a coarse clock: a write just after
// the sum could otherwise leave the recorded time unchanged; now any later
// write moves it.
func settleAndSum(path string) (fileSum, error) {
	t := time.Now().Add(-2 * time.Second)
	if err := os.Chtimes(path, t, t); err != nil {
		return fileSum{}, err
	}
	return sumFile(path)
}

// recordSum writes path's sidecar sum (atomically, synced).
func recordSum(path string) error {
	s, err := settleAndSum(path)
	if err != nil {
		return err
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return writeAtomic(sumPath(path), func(w io.Writer) error { _, err := w.Write(b); return err })
}

// checkSum verifies path against its sidecar sum; a missing sum means the
// entry was never completed.
func checkSum(path string, full bool) error {
	b, err := os.ReadFile(sumPath(path))
	if err != nil {
		return err
	}
	var s fileSum
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s: %w", sumPath(path), err)
	}
	return verifyFile(path, s, full)
}

// writeAtomic writes path via a temporary file, synced to disk before the
// rename and the rename synced too, so neither a reader nor a crash ever
// sees a partial cache entry.
func writeAtomic(path string, write func(w io.Writer) error) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, tempPrefix(".tmp"))
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}

// writeFileSync writes b to path and syncs it.
func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, werr := f.Write(b)
	serr := f.Sync()
	return errors.Join(werr, serr, f.Close())
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, unix.EINVAL) {
		return err
	}
	return nil
}

// Temporary files and directories carry the creating process's ID, so a
// later ember can tell leftovers of a process that died (SIGKILL, power
// loss) from work in progress.
func tempPrefix(kind string) string { return kind + "-" + strconv.Itoa(os.Getpid()) + "-" }

var tempRE = regexp.MustCompile(`^(\.tmp|fetch|build)-(\d+)-`)

// sweep removes temporary entries whose process is gone, in the cache's
// top directory and the directories entries are renamed into.
func (c *Cache) sweep() {
	c.swept.Do(func() {
		for _, d := range []string{c.Dir, filepath.Join(c.Dir, "initramfs"), filepath.Join(c.Dir, "kernels")} {
			ents, err := os.ReadDir(d)
			if err != nil {
				continue
			}
			for _, e := range ents {
				m := tempRE.FindStringSubmatch(e.Name())
				if m == nil {
					continue
				}
				pid, err := strconv.Atoi(m[2])
				if err != nil || processAlive(pid) {
					continue
				}
				p := filepath.Join(d, e.Name())
				if err := os.RemoveAll(p); err == nil {
					c.log().Info("removed a leftover of an interrupted build", "path", p)
				}
			}
		}
	})
}

// processAlive reports whether pid exists (kill with signal 0).
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}
