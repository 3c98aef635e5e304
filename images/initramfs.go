package images

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/ember-vmm/ember/guest/proto"
	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/u-root/uio/llog"
)

// urootVersion is the u-root release whose commands go into the image.
const urootVersion = "v0.14.0"

// builderVersion changes when the image layout changes, so cached images
// are rebuilt.
const builderVersion = "1"

// urootCommands are the u-root core commands in ember's image. ember's
// init replaces u-root's init, poweroff and shutdown.
var urootCommands = []string{
	"base64", "basename", "cat", "chmod", "chroot", "cmp", "cp", "date", "dd", "df", "dirname",
	"dmesg", "echo", "false", "find", "free", "gosh", "grep", "gzip", "hexdump", "hostname", "id",
	"insmod", "kill", "ln", "ls", "lsmod", "mkdir", "mknod", "mktemp", "more", "mount", "mv",
	"printenv", "ps", "pwd", "readlink", "rm", "rmmod", "seq", "sleep", "sort", "stty", "sync",
	"tail", "tee", "time", "timeout", "touch", "tr", "true", "umount", "uname", "uniq", "uptime",
	"wc", "which", "xargs", "yes",
}

// guestModules go into the default image when the kernel has them (the
// virtio devices that follow use them).
var guestModules = []string{
	"drivers/virtio/virtio_mmio.ko", "drivers/block/virtio_blk.ko", "drivers/net/virtio_net.ko",
	"drivers/char/hw_random/virtio-rng.ko", "fs/9p/9p.ko", "net/9p/9pnet_virtio.ko",
}

// l1Modules give the nested L1 guest /dev/kvm (AMD SVM, as QEMU's TCG
// emulates) and 9p over virtio-pci for the host's files.
var l1Modules = []string{
	"arch/x86/kvm/kvm-amd.ko", "drivers/virtio/virtio_pci.ko", "net/9p/9pnet_virtio.ko", "fs/9p/9p.ko",
}

// Initramfs returns ember's default initramfs for k: u-root's core
// commands, ember's init and k's modules. k may be nil (no modules).
func (c *Cache) Initramfs(ctx context.Context, k *Kernel, initBin string) (string, error) {
	ib, err := os.ReadFile(initBin)
	if err != nil {
		return "", fmt.Errorf("guest init: %w", err)
	}
	version, mods := "none", []string(nil)
	if k != nil {
		version = k.Version
		if mods, err = resolveModules(k.ModulesDir, guestModules, false); err != nil {
			return "", err
		}
	}
	key := hashOf(ib, []byte(version), []byte(strings.Join(mods, ",")), []byte(urootVersion+builderVersion+strings.Join(urootCommands, ",")))
	out := filepath.Join(c.Dir, "initramfs", "ember-"+version+"-"+key+".cpio")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	unlock, err := c.lock()
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	err = c.step("building the initramfs (u-root "+urootVersion+" + ember-init) for "+version, func() error {
		return c.buildUroot(ctx, out, initBin, k, mods)
	})
	return out, err
}

// buildModule is a Go module in the cache from which mkuimage resolves
// u-root's command packages, wherever ember runs from.
func (c *Cache) buildModule() (string, error) {
	dir := filepath.Join(c.Dir, "build", "uroot-"+urootVersion)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	gomod := fmt.Sprintf("module emberimage\n\ngo 1.22\n\nrequire github.com/u-root/u-root %s\n", urootVersion)
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(gomod), 0o644); err != nil {
		return "", err
	}
	// A blank import keeps the requirement in the build list.
	src := "package emberimage\n\nimport _ \"github.com/u-root/u-root/pkg/cpio\"\n"
	return dir, os.WriteFile(filepath.Join(dir, "deps.go"), []byte(src), 0o644)
}

func (c *Cache) buildUroot(ctx context.Context, out, initBin string, k *Kernel, mods []string) error {
	mod, err := c.buildModule()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(c.Dir, "build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// mkuimage resolves packages with the go command; -mod=mod lets it
	// fill go.sum in the build module from the module proxy.
	os.Setenv("GOFLAGS", strings.TrimSpace(os.Getenv("GOFLAGS")+" -mod=mod"))
	if tidy, err := runGo(ctx, mod, "mod", "tidy"); err != nil {
		return fmt.Errorf("preparing u-root %s: %v: %s", urootVersion, err, tidy)
	}
	var cmds []string
	for _, n := range urootCommands {
		cmds = append(cmds, "github.com/u-root/u-root/cmds/core/"+n)
	}
	files := []string{initBin + ":init"}
	var modList bytes.Buffer
	for _, m := range mods {
		files = append(files, filepath.Join(k.ModulesDir, "kernel", m)+":"+moduleTarget(k, m))
		fmt.Fprintln(&modList, "/"+moduleTarget(k, m))
	}
	listFile := filepath.Join(tmp, "modules")
	if err := os.WriteFile(listFile, modList.Bytes(), 0o644); err != nil {
		return err
	}
	files = append(files, listFile+":"+strings.TrimPrefix(proto.ModulesFile, "/"))
	var logBuf bytes.Buffer
	tmpOut := out + ".partial"
	os.MkdirAll(filepath.Dir(out), 0o755)
	err = uimage.Create(newLogger(&logBuf),
		uimage.WithReplaceEnv(golang.Default(golang.DisableCGO(), golang.WithGOARCH("amd64"), golang.WithWorkingDir(mod))),
		uimage.WithTempDir(tmp),
		uimage.WithBusyboxCommands(cmds...),
		uimage.WithFiles(files...),
		uimage.WithSkipLDD(),
		uimage.WithSymlink("bin/sh", "/init"),
		uimage.WithSymlink("bin/ember-info", "/init"),
		uimage.WithSymlink("bin/poweroff", "/init"),
		uimage.WithSymlink("bin/reboot", "/init"),
		uimage.WithSymlink("bin/halt", "/init"),
		uimage.WithCPIOOutput(tmpOut),
	)
	if err != nil {
		os.Remove(tmpOut)
		return fmt.Errorf("building the initramfs: %v\n%s", err, tail(logBuf.String(), 20))
	}
	return os.Rename(tmpOut, out)
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

func moduleTarget(k *Kernel, m string) string {
	return filepath.Join("lib/modules", k.Version, "kernel", m)
}

// L1Initramfs returns the initramfs of --accel nested's L1 guest: ember's
// init and the modules for KVM and 9p, nothing else.
func (c *Cache) L1Initramfs(ctx context.Context, k *Kernel, initBin string) (string, error) {
	ib, err := os.ReadFile(initBin)
	if err != nil {
		return "", fmt.Errorf("guest init: %w", err)
	}
	mods, err := resolveModules(k.ModulesDir, l1Modules, true)
	if err != nil {
		return "", err
	}
	key := hashOf(ib, []byte(k.Version), []byte(strings.Join(mods, ",")), []byte(builderVersion))
	out := filepath.Join(c.Dir, "initramfs", "l1-"+k.Version+"-"+key+".cpio")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	recs := []cpio.Record{cpio.StaticFile("init", string(ib), 0o755)}
	var list bytes.Buffer
	for _, m := range mods {
		b, err := os.ReadFile(filepath.Join(k.ModulesDir, "kernel", m))
		if err != nil {
			return "", err
		}
		recs = append(recs, cpio.StaticFile(moduleTarget(k, m), string(b), 0o644))
		fmt.Fprintln(&list, "/"+moduleTarget(k, m))
	}
	recs = append(recs, cpio.StaticFile(strings.TrimPrefix(proto.ModulesFile, "/"), list.String(), 0o644))
	err = writeAtomic(out, func(w io.Writer) error { return writeCPIO(w, recs) })
	return out, err
}

func writeCPIO(w io.Writer, recs []cpio.Record) error {
	rw := cpio.Newc.Writer(w)
	if err := cpio.WriteRecordsAndDirs(rw, recs); err != nil {
		return err
	}
	return cpio.WriteTrailer(rw)
}

// RunArchive is a newc cpio holding proto.RunFile, appended by the VMM to
// the initramfs so the cached image stays the same for every command.
func RunArchive(r proto.Run) ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	err = writeCPIO(&buf, []cpio.Record{cpio.StaticFile(strings.TrimPrefix(proto.RunFile, "/"), string(b), 0o644)})
	return buf.Bytes(), err
}

// resolveModules expands wanted (paths under kernel/) with their
// dependencies, dependencies first. Debian's packages ship no modules.dep
// (depmod writes it at install time), so dependencies come from each
// module's .modinfo "depends=" entry. Missing wanted modules are an error
// only if required.
func resolveModules(modDir string, wanted []string, required bool) ([]string, error) {
	root := filepath.Join(modDir, "kernel")
	byName := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			rel, _ := filepath.Rel(root, p)
			byName[modName(rel)] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	return resolveDeps(wanted, required, byName, func(rel string) ([]string, error) {
		return moduleDepends(filepath.Join(root, rel))
	})
}

// modName is the kernel's name for a module file: basename, '-' → '_'.
func modName(rel string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(rel), ".ko"), "-", "_")
}

func resolveDeps(wanted []string, required bool, byName map[string]string, depends func(string) ([]string, error)) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	var visit func(rel string, depth int) error
	visit = func(rel string, depth int) error {
		if seen[rel] {
			return nil
		}
		if depth > 64 {
			return fmt.Errorf("kernel module %s: dependency chain too deep", rel)
		}
		seen[rel] = true
		ds, err := depends(rel)
		if err != nil {
			return err
		}
		for _, d := range ds {
			p, ok := byName[strings.ReplaceAll(d, "-", "_")]
			if !ok {
				return fmt.Errorf("kernel module %s needs %s, which is missing", rel, d)
			}
			if err := visit(p, depth+1); err != nil {
				return err
			}
		}
		out = append(out, rel)
		return nil
	}
	for _, w := range wanted {
		rel, ok := byName[modName(w)]
		if !ok {
			if required {
				return nil, fmt.Errorf("kernel module %s not found", w)
			}
			continue
		}
		if err := visit(rel, 0); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// moduleDepends reads "depends=a,b" from a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kernel module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, nil
	}
	b, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("kernel module %s: %w", path, err)
	}
	return parseDepends(b), nil
}

func parseDepends(modinfo []byte) []string {
	for _, kv := range bytes.Split(modinfo, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var ds []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					ds = append(ds, d)
				}
			}
			return ds
		}
	}
	return nil
}

// newLogger collects mkuimage's messages for an error report.
func newLogger(w io.Writer) *llog.Logger {
	return llog.New(slog.LevelInfo, func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) })
}
