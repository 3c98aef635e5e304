package images

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// maxTreeModules bounds how many lines of a tree's modules.order are read
// (a full distribution build has about 4000 modules).
const maxTreeModules = 20000

// maxModuleSize bounds one module read from a build tree.
const maxModuleSize = 64 << 20

// TreeKernel describes the kernel at path, built in the kernel build
// directory dir, with the modules the default image needs taken from the
// tree (its modules.order lists what was built; dependencies come from
// each module's .modinfo, as depmod would find them). It returns nil when
// the tree built no modules: the image then carries none, and the kernel
// must have what it needs built in.
func TreeKernel(dir, path string) (*Kernel, error) {
	order, err := os.Open(filepath.Join(dir, "modules.order"))
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("kernel tree %s: %w", dir, err)
	}
	defer order.Close()
	release, err := os.ReadFile(filepath.Join(dir, "include", "config", "kernel.release"))
	if err != nil {
		return nil, fmt.Errorf("kernel tree %s: built modules but no include/config/kernel.release (an interrupted build? run make again): %w", dir, err)
	}
	version := strings.TrimSpace(string(release))
	if version == "" || strings.ContainsAny(version, "/ \t") {
		return nil, fmt.Errorf("kernel tree %s: include/config/kernel.release holds %q (expected a release such as 6.1.0)", dir, version)
	}
	// What the tree built, by kernel name; only the modules the image
	// needs, and theirs, are read (a distribution config builds
	// thousands).
	byName := map[string]string{}
	sc := bufio.NewScanner(order)
	for n := 0; sc.Scan(); n++ {
		if n >= maxTreeModules {
			return nil, fmt.Errorf("kernel tree %s: modules.order lists more than %d modules", dir, maxTreeModules)
		}
		if rel, ok := treeModulePath(sc.Text()); ok {
			byName[modName(rel)] = rel
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("kernel tree %s: modules.order: %w", dir, err)
	}
	direct := map[string][]string{}
	var contents [][]byte
	var queue []string
	for _, w := range l2Modules {
		queue = append(queue, modName(w))
	}
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		rel, ok := byName[name]
		if _, seen := direct[rel]; !ok || seen {
			continue
		}
		ko, err := readModule(dir, rel)
		if err != nil {
			if os.IsNotExist(err) {
				// Listed but not built (a partial make): not usable.
				continue
			}
			return nil, fmt.Errorf("kernel tree %s: %w", dir, err)
		}
		ds, err := modinfoDepends(ko)
		if err != nil {
			return nil, fmt.Errorf("kernel tree %s: module %s: %w", dir, rel, err)
		}
		direct[rel] = ds
		contents = append(contents, []byte(rel), ko)
		for _, d := range ds {
			queue = append(queue, strings.ReplaceAll(d, "-", "_"))
		}
	}
	g, err := depGraphFromModinfo(direct)
	if err != nil {
		return nil, fmt.Errorf("kernel tree %s: %w", dir, err)
	}
	// The image is rebuilt when a module it carries was rebuilt.
	return &Kernel{Flavour: "tree", Version: version, Path: path, ModulesDir: dir, deps: g,
		treeSum: hashOf(contents...)[:16]}, nil
}

// treeModulePath turns a modules.order line into a module path relative
// to the tree: "drivers/x/y.ko", "drivers/x/y.o" (newer kernels) or
// "kernel/drivers/x/y.ko" (older ones).
func treeModulePath(line string) (string, bool) {
	p := strings.TrimPrefix(strings.TrimSpace(line), "kernel/")
	if p == "" || !filepath.IsLocal(p) {
		return "", false
	}
	switch {
	case strings.HasSuffix(p, ".ko"):
	case strings.HasSuffix(p, ".o"):
		p = strings.TrimSuffix(p, ".o") + ".ko"
	default:
		return "", false
	}
	return filepath.ToSlash(filepath.Clean(p)), true
}

// readModule reads one module file of the tree, a regular file of bounded
// size.
func readModule(dir, rel string) ([]byte, error) {
	p := filepath.Join(dir, rel)
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || st.Size() > maxModuleSize {
		return nil, fmt.Errorf("module %s: not a regular file of at most %d MiB", rel, maxModuleSize>>20)
	}
	return os.ReadFile(p)
}
