package configs

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Matrix is an `ember test` file: [[target]]s, each a VM and a command,
// run as `ember run` would run them.
type Matrix struct {
	// Parallel bounds how many targets run at once (0: 2).
	Parallel int      `toml:"parallel"`
	Targets  []Target `toml:"target"`
	// Source is the file the matrix came from.
	Source string `toml:"-"`
}

// Target is one test: name and command are required; the rest defaults
// as in `ember run`'s built-in config.
type Target struct {
	Name    string   `toml:"name"`
	Command []string `toml:"command"`
	Kernel  string   `toml:"kernel"`
	Initrd  string   `toml:"initrd"`
	Cmdline string   `toml:"cmdline"`
	CPUs    int      `toml:"cpus"`
	Memory  Size     `toml:"memory"`
	Timeout Duration `toml:"timeout"`
	Env     []string `toml:"env"`
	// PanicOnWarn makes a kernel warning or oops a panic.
	PanicOnWarn bool `toml:"panic_on_warn"`
	// Shares are host directories for the target ([[target.share]]).
	Shares []Share `toml:"share"`
}

// MaxParallel bounds Matrix.Parallel.
const MaxParallel = 64

// LoadMatrix reads and checks an `ember test` file: strict keys, every
// target a valid VM.
func LoadMatrix(path string) (*Matrix, error) {
	b, err := readSmall(path, "test matrix", "")
	if err != nil {
		return nil, err
	}
	return ParseMatrix(b, path)
}

// ParseMatrix decodes and checks data (named name in messages).
func ParseMatrix(data []byte, name string) (*Matrix, error) {
	m := &Matrix{}
	d := toml.NewDecoder(strings.NewReader(string(data)))
	d.DisallowUnknownFields()
	if err := d.Decode(m); err != nil {
		return nil, decodeError(name, data, err)
	}
	m.Source = name
	if m.Parallel == 0 {
		m.Parallel = 2
	}
	if m.Parallel < 1 || m.Parallel > MaxParallel {
		return nil, fmt.Errorf("%s: parallel: %d is out of range (expected 1..%d)", name, m.Parallel, MaxParallel)
	}
	if len(m.Targets) == 0 {
		return nil, fmt.Errorf("%s: no [[target]] tables (each needs name and command)", name)
	}
	seen := map[string]bool{}
	for i, t := range m.Targets {
		key := fmt.Sprintf("target[%d]", i)
		switch {
		case t.Name == "":
			return nil, fmt.Errorf("%s: %s.name: missing (every target needs a name)", name, key)
		case strings.ContainsAny(t.Name, "\x00\n"):
			return nil, fmt.Errorf("%s: %s.name: must be one line", name, key)
		case seen[t.Name]:
			return nil, fmt.Errorf("%s: %s.name: %q is used twice", name, key, t.Name)
		case len(t.Command) == 0:
			return nil, fmt.Errorf("%s: %s (%s).command: missing (e.g. command = [\"sh\", \"-c\", \"make check\"])", name, key, t.Name)
		}
		seen[t.Name] = true
		if _, err := m.VM(i); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// VM is target i as a validated VM description, over the built-in
// defaults; relative kernel and initrd paths are the file's neighbours.
func (m *Matrix) VM(i int) (*VM, error) {
	t := m.Targets[i]
	v := Default()
	v.Source = fmt.Sprintf("%s: target %q", m.Source, t.Name)
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) || strings.HasPrefix(p, "debian:") || p == "default" || p == "none" {
			return p
		}
		return filepath.Join(filepath.Dir(m.Source), p)
	}
	if t.Kernel != "" {
		v.Boot.Kernel = rel(t.Kernel)
	}
	if t.Initrd != "" {
		v.Boot.Initrd = rel(t.Initrd)
	}
	if t.Cmdline != "" {
		v.Boot.Cmdline = t.Cmdline
	}
	v.Boot.PanicOnWarn = t.PanicOnWarn
	if t.CPUs != 0 {
		v.Machine.CPUs = t.CPUs
	}
	if t.Memory != 0 {
		v.Machine.Memory = t.Memory
	}
	v.Run.Command = t.Command
	v.Run.Env = append(v.Run.Env, t.Env...)
	v.Run.Timeout = t.Timeout
	for _, sh := range t.Shares {
		if sh.Path != "" && !filepath.IsAbs(sh.Path) {
			sh.Path = filepath.Join(filepath.Dir(m.Source), sh.Path)
		}
		v.Shares = append(v.Shares, sh)
	}
	if err := v.Validate(); err != nil {
		return nil, err
	}
	return v, nil
}
