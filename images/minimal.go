package images

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// minimalFragment is the minimal kernel's configuration, merged over
// tinyconfig (minimal.config, read by people as well as by the build).
//
//go:embed minimal.config
var minimalFragment string

// MinimalName is how configs and flags name the minimal kernel.
const MinimalName = "minimal"

// minimalSource is Debian's kernel source package and tarball.
const (
	minimalSourcePackage = "linux-source-6.1"
	minimalSourceTarball = "/usr/src/linux-source-6.1.tar.xz"
)

// minimalTools are what building a kernel needs, with the Debian package
// of each.
func minimalTools() [][2]string {
	return [][2]string{
		{"make", "make"}, {"gcc", "gcc"}, {"ld", "binutils"}, {"bc", "bc"}, {"flex", "flex"},
		{"bison", "bison"}, {"xz", "xz-utils"}, {"perl", "perl"}, {"lz4", "lz4"},
	}
}

// ErrMinimalNotBuilt: --kernel minimal before ember images kernel --minimal.
var ErrMinimalNotBuilt = errors.New("the minimal kernel is not built yet: run `ember images kernel --minimal` (about 10 minutes, once per cache)")

// minimalKey names a build of the minimal kernel: its configuration and
// the source it is built from.
func minimalKey() string {
	sum := sha256.Sum256([]byte(minimalSourcePackage + "\n" + minimalFragment))
	return hex.EncodeToString(sum[:6])
}

func (c *Cache) minimalDir() string {
	return filepath.Join(c.Dir, "kernels", "minimal-"+minimalKey())
}

// MinimalKernel returns the cached minimal kernel's bzImage, or
// ErrMinimalNotBuilt.
func (c *Cache) MinimalKernel() (string, error) {
	dir := c.minimalDir()
	if _, err := os.Stat(filepath.Join(dir, "done")); err != nil {
		return "", ErrMinimalNotBuilt
	}
	return filepath.Join(dir, "bzImage"), nil
}

// BuildMinimal builds the minimal kernel from Debian's kernel source, once
// per cache: tinyconfig, then minimal.config merged over it, every option
// it sets to y or leaves out checked, then bzImage with all CPUs. Missing
// packages are installed with apt-get when running as root; otherwise the
// error says which. It returns the bzImage.
func (c *Cache) BuildMinimal(ctx context.Context) (string, error) {
	if p, err := c.MinimalKernel(); err == nil {
		return p, nil
	}
	unlock, err := c.lock(ctx, "minimal-kernel")
	if err != nil {
		return "", err
	}
	defer unlock()
	if p, err := c.MinimalKernel(); err == nil {
		return p, nil
	}
	if err := c.minimalPrerequisites(ctx); err != nil {
		return "", err
	}
	out := c.minimalDir()
	build := out + ".build"
	_ = os.RemoveAll(build)
	defer os.RemoveAll(build)
	if err := os.MkdirAll(build, 0o755); err != nil {
		return "", err
	}
	logPath := filepath.Join(c.Dir, "kernels", "minimal-build.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return "", err
	}
	defer logf.Close()
	run := func(what string, name string, args ...string) error {
		return c.step(what, func() error {
			cmd := exec.CommandContext(ctx, name, args...)
			cmd.Dir = build
			cmd.Stdout, cmd.Stderr = logf, logf
			cmd.WaitDelay = 10 * time.Second
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("%s: %v (the end of %s:\n%s)", what, err, logPath, fileTail(logPath, 15))
			}
			return nil
		})
	}
	// Documentation is left out but for its Kconfig files; everything
	// else is needed, if only for Kconfig.
	if err := run("unpacking "+minimalSourceTarball, "tar", "-xf", minimalSourceTarball, "--strip-components=1",
		"--exclude=*/Documentation/*", "--wildcards"); err != nil {
		return "", err
	}
	if err := run("unpacking the documentation's Kconfig files", "tar", "-xf", minimalSourceTarball, "--strip-components=1",
		"--wildcards", "*/Documentation/*Kconfig*"); err != nil {
		return "", err
	}
	frag := filepath.Join(build, "ember-minimal.config")
	if err := os.WriteFile(frag, []byte(minimalFragment), 0o644); err != nil {
		return "", err
	}
	mk := func(what string, args ...string) error {
		return run(what, "make", append([]string{"ARCH=x86_64"}, args...)...)
	}
	if err := mk("configuring (tinyconfig)", "tinyconfig"); err != nil {
		return "", err
	}
	if err := run("merging images/minimal.config", "scripts/kconfig/merge_config.sh", "-m", ".config", frag); err != nil {
		return "", err
	}
	if err := mk("configuring (olddefconfig)", "olddefconfig"); err != nil {
		return "", err
	}
	cfg, err := os.ReadFile(filepath.Join(build, ".config"))
	if err != nil {
		return "", err
	}
	if missing := missingOptions(minimalFragment, string(cfg)); len(missing) > 0 {
		return "", fmt.Errorf("minimal kernel: the configuration does not follow images/minimal.config for %s (dependencies unmet, or selected by another option)", strings.Join(missing, ", "))
	}
	jobs := fmt.Sprintf("-j%d", runtime.NumCPU())
	if err := mk(fmt.Sprintf("building the minimal kernel (%s; a few minutes per core; log in %s)", jobs, logPath), jobs, "bzImage"); err != nil {
		return "", err
	}
	tmp := out + ".new"
	_ = os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	for _, f := range [][2]string{{"arch/x86/boot/bzImage", "bzImage"}, {"vmlinux", "vmlinux"}, {".config", "config"}} {
		if err := copyFile(filepath.Join(build, f[0]), filepath.Join(tmp, f[1])); err != nil {
			return "", fmt.Errorf("minimal kernel: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, "done"), nil, 0o644); err != nil {
		return "", err
	}
	_ = os.RemoveAll(out)
	if err := os.Rename(tmp, out); err != nil {
		return "", err
	}
	return c.MinimalKernel()
}

// minimalPrerequisites makes sure the kernel source and the build tools
// are there.
func (c *Cache) minimalPrerequisites(ctx context.Context) error {
	var pkgs []string
	if _, err := os.Stat(minimalSourceTarball); err != nil {
		pkgs = append(pkgs, minimalSourcePackage)
	}
	for _, t := range minimalTools() {
		if _, err := exec.LookPath(t[0]); err != nil {
			pkgs = append(pkgs, t[1])
		}
	}
	if _, err := os.Stat("/usr/include/libelf.h"); err != nil {
		pkgs = append(pkgs, "libelf-dev")
	}
	if len(pkgs) == 0 {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
		return fmt.Errorf("the minimal kernel needs %s: install them (Debian: apt-get install %s) and run again", strings.Join(pkgs, ", "), strings.Join(pkgs, " "))
	}
	return c.step("installing "+strings.Join(pkgs, ", ")+" with apt-get", func() error {
		cmd := exec.CommandContext(ctx, "apt-get", append([]string{"install", "-y", "-qq", "--no-install-recommends"}, pkgs...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get install %s: %v: %s", strings.Join(pkgs, " "), err, tail(string(out), 5))
		}
		return nil
	})
}

// missingOptions are the options frag sets to y that cfg does not have,
// and those it leaves out ("# CONFIG_X is not set") that cfg still has.
func missingOptions(frag, cfg string) []string {
	have := map[string]bool{}
	for _, l := range strings.Split(cfg, "\n") {
		if name, v, ok := strings.Cut(l, "="); ok && strings.HasPrefix(name, "CONFIG_") && (v == "y" || v == "m") {
			have[name] = true
		}
	}
	var missing []string
	for _, l := range strings.Split(frag, "\n") {
		l = strings.TrimSpace(l)
		if name, ok := strings.CutSuffix(l, "=y"); ok && strings.HasPrefix(name, "CONFIG_") && !have[name] {
			missing = append(missing, name)
		}
		if name, ok := strings.CutSuffix(strings.TrimPrefix(l, "# "), " is not set"); ok && strings.HasPrefix(name, "CONFIG_") && have[name] {
			missing = append(missing, "no "+name)
		}
	}
	return missing
}

// copyFile copies src to dst the cache's way: synced, then renamed into
// place.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeAtomic(dst, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	})
}

// fileTail is the last n lines of a file.
func fileTail(path string, n int) string {
	b, _ := os.ReadFile(path)
	return tail(string(b), n)
}
