package images

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/ember-vmm/ember/guest/proto"
	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/u-root/uio/llog"
)

// urootVersion is the u-root release whose commands go into the image
// (the version ember's go.mod requires).
const urootVersion = "v0.14.0"

// builderVersion changes whenever the image contents change in a way the
// other cache-key inputs do not capture, so cached images are rebuilt.
const builderVersion = "3"

// urootCommands are the u-root core commands in the default image, built as
// one busybox in /bbin. ember's init provides /init, sh, poweroff, reboot,
// halt and shutdown, so u-root's init, poweroff and shutdown stay out.
var urootCommands = []string{
	"base64", "basename", "blkid", "cat", "chmod", "chroot", "cmp", "comm", "cp", "cpio", "date",
	"dd", "df", "dirname", "dmesg", "echo", "false", "find", "free", "gosh", "grep", "gzip",
	"hexdump", "hostname", "id", "insmod", "ip", "kill", "ln", "losetup", "ls", "lsmod", "md5sum",
	"mkdir", "mkfifo", "mknod", "mktemp", "more", "mount", "mv", "netcat", "nohup", "ping", "printenv", "ps", "pwd",
	"readlink", "rm", "rmmod", "seq", "shasum", "sleep", "sort", "stty", "strings", "sync", "tail",
	"tar", "tee", "time", "timeout", "touch", "tr", "true", "truncate", "umount", "uname", "uniq",
	"unshare", "uptime", "wc", "which", "xargs", "yes",
}

// initLinks are the names under which the multi-call guest init is also
// reachable (it dispatches on argv[0]). They live in /bin, which precedes
// u-root's /bbin in the guest's PATH.
var initLinks = []string{"sh", "ember-info", "ember-vsock", "poweroff", "reboot", "halt", "shutdown"}

// Initramfs returns ember's default initramfs for k: u-root's core
// commands, the guest init at /init and k's virtio/9p/ext4 modules with
// proto.ModulesFile listing them in load order. k may be nil (a kernel of
// the user's own): then the image carries no modules. Built once per set of
// inputs: u-root's commands are compiled once per cache (urootBase), so a
// new kernel or guest init costs well under a second; later calls return the
// cached file.
func (c *Cache) Initramfs(ctx context.Context, k *Kernel, initBin string) (string, error) {
	ib, err := os.ReadFile(initBin)
	if err != nil {
		return "", fmt.Errorf("guest init %s: %w", initBin, err)
	}
	version, mods := "none", []string(nil)
	if k != nil {
		version = k.Version
		if mods, err = kernelModules(k, l2Modules, false); err != nil {
			return "", err
		}
		if k.treeSum != "" {
			// A build tree's modules change with every build of a release.
			version += "-" + k.treeSum
		}
	}
	key := initramfsKey(ib, version, mods, urootVersion, urootCommands)
	out := filepath.Join(c.Dir, "initramfs", "ember-"+version+"-"+key+".cpio")
	return out, c.buildOnce(ctx, out, "initramfs-"+key, func() error {
		base, err := c.urootBase(ctx)
		if err != nil {
			return err
		}
		recs := []cpio.Record{cpio.StaticFile("init", string(ib), 0o755)}
		if k != nil {
			more, err := moduleRecords(k, mods)
			if err != nil {
				return err
			}
			recs = append(recs, more...)
		}
		if err := writeAtomic(out, func(w io.Writer) error { return appendCPIO(w, base, recs) }); err != nil {
			return fmt.Errorf("initramfs %s: %w", out, err)
		}
		return nil
	})
}

// buildOnce makes the cache file out with build unless a valid one exists,
// holding the named lock so concurrent embers build it once, and records
// its size and checksum last: an entry without its sum, or not matching
// it, is built again.
func (c *Cache) buildOnce(ctx context.Context, out, lock string, build func() error) error {
	if c.entryOK(out) {
		return nil
	}
	unlock, err := c.lock(ctx, lock)
	if err != nil {
		return err
	}
	defer unlock()
	if c.entryOK(out) {
		return nil
	}
	_ = os.Remove(sumPath(out))
	if err := build(); err != nil {
		return err
	}
	if !cpioOK(out) {
		return fmt.Errorf("%s: the build did not produce a newc archive", out)
	}
	return recordSum(out)
}

// entryOK reports whether out is a complete cached archive.
func (c *Cache) entryOK(out string) bool {
	if err := checkSum(out, c.Verify); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			c.log().Info("cached image damaged; building it again", "err", err)
		}
		return false
	}
	return cpioOK(out)
}

// urootBase returns the kernel- and init-independent part of the default
// image: u-root's commands as one busybox in /bbin and the /bin links to
// /init. It takes a Go build (tens of seconds), so it is built once and
// shared by every kernel and every version of the guest init.
func (c *Cache) urootBase(ctx context.Context) (string, error) {
	key := hashOf([]byte(urootVersion), []byte(strings.Join(urootCommands, ",")), []byte(strings.Join(initLinks, ",")), []byte(builderVersion))
	out := filepath.Join(c.Dir, "initramfs", "uroot-"+urootVersion+"-"+key+".cpio")
	return out, c.buildOnce(ctx, out, "uroot-"+key, func() error {
		return c.step("building u-root "+urootVersion+" commands for the initramfs", func() error {
			return c.buildUroot(ctx, out)
		})
	})
}

// moduleRecords are k's modules at their /lib/modules path and
// proto.ModulesFile listing them in load order.
func moduleRecords(k *Kernel, mods []string) ([]cpio.Record, error) {
	var recs []cpio.Record
	for _, m := range mods {
		b, err := os.ReadFile(filepath.Join(k.ModulesDir, m))
		if err != nil {
			return nil, err
		}
		recs = append(recs, cpio.StaticFile(moduleTarget(k, m), string(b), 0o644))
	}
	return append(recs, cpio.StaticFile(strings.TrimPrefix(proto.ModulesFile, "/"), modulesList(k, mods), 0o644)), nil
}

// appendCPIO writes the records of the newc archive base, then recs, as
// one archive.
func appendCPIO(w io.Writer, base string, recs []cpio.Record) error {
	f, err := os.Open(base)
	if err != nil {
		return err
	}
	defer f.Close()
	rr, err := cpio.Format("newc")
	if err != nil {
		return err
	}
	old, err := cpio.ReadAllRecords(rr.Reader(f))
	if err != nil {
		return fmt.Errorf("%s: %w", base, err)
	}
	have := map[string]bool{}
	for _, r := range recs {
		have[cpio.Normalize(r.Name)] = true
	}
	var all []cpio.Record
	for _, r := range old {
		if n := cpio.Normalize(r.Name); n != "" && n != "." && !have[n] {
			all = append(all, r)
		}
	}
	return writeCPIO(w, append(all, recs...))
}

// initramfsKey names an image by everything that goes into it.
func initramfsKey(initBin []byte, version string, mods []string, uroot string, cmds []string) string {
	return hashOf(initBin, []byte(version), []byte(strings.Join(mods, ",")), []byte(uroot),
		[]byte(strings.Join(cmds, ",")), []byte(strings.Join(initLinks, ",")), []byte(builderVersion))
}

// cpioOK reports whether path starts like a newc archive (the sum checked
// before it catches damage).
func cpioOK(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var m [6]byte
	_, err = io.ReadFull(f, m[:])
	return err == nil && string(m[:]) == "070701"
}

// kernelModules resolves wanted against k's modules.dep and checks that
// each resulting module is in the cache; paths are relative to ModulesDir.
func kernelModules(k *Kernel, wanted []string, required bool) ([]string, error) {
	g := k.deps
	if g == nil {
		f, err := os.Open(filepath.Join(k.ModulesDir, "modules.dep"))
		if err != nil {
			return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
		}
		defer f.Close()
		if g, err = parseModulesDep(f); err != nil {
			return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
		}
	}
	mods, err := g.resolve(wanted, required)
	if err != nil {
		return nil, fmt.Errorf("kernel %s (%s): %w", k.Version, k.Flavour, err)
	}
	for _, m := range mods {
		if _, err := os.Stat(filepath.Join(k.ModulesDir, m)); err != nil {
			return nil, fmt.Errorf("kernel %s: cached entry lacks %s (remove %s to fetch again): %w", k.Version, m, filepath.Dir(filepath.Dir(filepath.Dir(k.ModulesDir))), err)
		}
	}
	return mods, nil
}

// moduleTarget is where a module lives inside an image.
func moduleTarget(k *Kernel, rel string) string {
	return path.Join("lib/modules", k.Version, rel)
}

// modulesList is proto.ModulesFile's content: absolute paths in load order.
func modulesList(k *Kernel, mods []string) string {
	var b strings.Builder
	for _, m := range mods {
		b.WriteString("/" + moduleTarget(k, m) + "\n")
	}
	return b.String()
}

// buildModule prepares a Go module in the cache from which mkuimage
// resolves u-root's command packages, so building works whatever the
// current directory is.
func (c *Cache) buildModule() (string, error) {
	dir := filepath.Join(c.Dir, "build", "uroot-"+urootVersion)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	gomod := fmt.Sprintf("module emberimage\n\ngo 1.22\n\nrequire github.com/u-root/u-root %s\n", urootVersion)
	if old, err := os.ReadFile(filepath.Join(dir, "go.mod")); err != nil || !bytes.HasPrefix(old, []byte(gomod)) {
		if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(gomod), 0o644); err != nil {
			return "", err
		}
	}
	// A package in the module keeps the go command content with the module.
	src := "package emberimage\n"
	return dir, os.WriteFile(filepath.Join(dir, "doc.go"), []byte(src), 0o644)
}

func (c *Cache) buildUroot(ctx context.Context, out string) error {
	mod, err := c.buildModule()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(c.Dir, tempPrefix("build"))
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var cmds []string
	for _, n := range urootCommands {
		cmds = append(cmds, "github.com/u-root/u-root/cmds/core/"+n)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	partial, err := os.CreateTemp(filepath.Dir(out), tempPrefix(".tmp"))
	if err != nil {
		return err
	}
	partial.Close()
	defer os.Remove(partial.Name())
	mk := []uimage.Modifier{
		// -mod=mod lets the go command fill the build module's go.sum from
		// the module proxy (or the module cache) on first use.
		// goshsmall: gosh reads lines plainly (the guest's pty does the
		// editing) instead of through a full-screen line editor, whose
		// renderer can deadlock on exit (bubbletea 0.24) and which queries
		// the terminal.
		uimage.WithReplaceEnv(golang.Default(golang.DisableCGO(), golang.WithGOARCH("amd64"), golang.WithBuildTag("goshsmall"),
			golang.WithWorkingDir(mod), golang.WithMod(golang.ModOnly))),
		uimage.WithTempDir(tmp),
		uimage.WithBusyboxCommands(cmds...),
		uimage.WithSkipLDD(),
		uimage.WithCPIOOutput(partial.Name()),
	}
	for _, l := range initLinks {
		mk = append(mk, uimage.WithSymlink("bin/"+l, "/init"))
	}
	var logBuf bytes.Buffer
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := uimage.Create(newLogger(&logBuf), mk...); err != nil {
		return fmt.Errorf("building the initramfs: %v\n%s", err, tail(logBuf.String(), 20))
	}
	c.log().Debug("mkuimage", "log", logBuf.String())
	if err := os.Chmod(partial.Name(), 0o644); err != nil {
		return err
	}
	if err := syncFile(partial.Name()); err != nil {
		return err
	}
	if err := os.Rename(partial.Name(), out); err != nil {
		return err
	}
	return syncDir(filepath.Dir(out))
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// L1Initramfs returns the initramfs of --accel nested's L1 guest: the
// guest init at /init (it acts as the L1 host when proto.Run.Nested is set)
// and the modules for KVM on AMD and 9p over virtio-pci, nothing else. k
// must be a flavour with those modules (amd64). The archive is left
// uncompressed: QEMU loads it directly and the emulated CPU does not spend
// time inflating it.
func (c *Cache) L1Initramfs(ctx context.Context, k *Kernel, initBin string) (string, error) {
	if k == nil {
		return "", fmt.Errorf("L1 initramfs: no kernel")
	}
	ib, err := os.ReadFile(initBin)
	if err != nil {
		return "", fmt.Errorf("guest init %s: %w", initBin, err)
	}
	mods, err := kernelModules(k, l1Modules, true)
	if err != nil {
		return "", fmt.Errorf("L1 initramfs: %w", err)
	}
	key := hashOf(ib, []byte(k.Version), []byte(strings.Join(mods, ",")), []byte(builderVersion))
	out := filepath.Join(c.Dir, "initramfs", "l1-"+k.Version+"-"+key+".cpio")
	return out, c.buildOnce(ctx, out, "initramfs-"+key, func() error {
		more, err := moduleRecords(k, mods)
		if err != nil {
			return err
		}
		recs := append([]cpio.Record{cpio.StaticFile("init", string(ib), 0o755)}, more...)
		if err := writeAtomic(out, func(w io.Writer) error { return writeCPIO(w, recs) }); err != nil {
			return fmt.Errorf("L1 initramfs %s: %w", out, err)
		}
		return nil
	})
}

// writeCPIO writes recs, with their parent directories, as a newc archive.
func writeCPIO(w io.Writer, recs []cpio.Record) error {
	rw := cpio.Newc.Writer(w)
	if err := cpio.WriteRecordsAndDirs(rw, recs); err != nil {
		return err
	}
	return cpio.WriteTrailer(rw)
}

// newLogger collects mkuimage's messages for an error report.
func newLogger(w io.Writer) *llog.Logger {
	return llog.New(slog.LevelInfo, func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) })
}
