package nested

import (
	"bufio"
	"debug/elf"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// qmpLimit bounds the whole exchange with a QEMU that may itself be stuck.
const qmpLimit = 5 * time.Second

// vcpuState asks QEMU, over its QMP socket, where each of L1's vCPUs is:
// the report of an L1 that stopped responding says whether its CPUs were
// halted or spinning, and where (named when the kernel's symbols are at
// hand).
// kernelDir is where the kernel's symbols may be. It returns "" when QEMU
// does not answer.
func vcpuState(sock, kernelDir string) string {
	c, err := net.DialTimeout("unix", sock, qmpLimit)
	if err != nil {
		return ""
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(qmpLimit))
	r := bufio.NewReaderSize(c, 64<<10)
	if _, err := r.ReadBytes('\n'); err != nil { // the greeting
		return ""
	}
	var out string
	for _, cmd := range []string{
		`{"execute":"qmp_capabilities"}`,
		`{"execute":"human-monitor-command","arguments":{"command-line":"info registers -a"}}`,
	} {
		if _, err := c.Write([]byte(cmd + "\n")); err != nil {
			return ""
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return ""
			}
			var m struct {
				Return json.RawMessage `json:"return"`
				Error  *struct{ Desc string }
			}
			if json.Unmarshal(line, &m) != nil || (m.Return == nil && m.Error == nil) {
				continue // an event
			}
			if m.Error != nil {
				return ""
			}
			_ = json.Unmarshal(m.Return, &out)
			break
		}
	}
	return summarizeRegisters(out, loadSymbols(kernelDir))
}

var (
	cpuHeader = regexp.MustCompile(`(?m)^CPU#(\d+)`)
	cpuRIP    = regexp.MustCompile(`(?m)^[ER]IP=([0-9a-f]+) .*CPL=(\d).* HLT=(\d)`)
)

// summarizeRegisters turns QEMU's "info registers -a" into one line per
// vCPU: RIP (with its symbol), privilege level and whether it is halted.
func summarizeRegisters(dump string, syms *symbols) string {
	heads := cpuHeader.FindAllStringSubmatchIndex(dump, -1)
	var b strings.Builder
	for i, h := range heads {
		end := len(dump)
		if i+1 < len(heads) {
			end = heads[i+1][0]
		}
		m := cpuRIP.FindStringSubmatch(dump[h[0]:end])
		if m == nil {
			continue
		}
		rip, _ := strconv.ParseUint(m[1], 16, 64)
		state := "running"
		if m[3] == "1" {
			state = "halted"
		}
		fmt.Fprintf(&b, "vCPU %s: RIP %#x%s, CPL %s, %s\n", dump[h[2]:h[3]], rip, syms.lookup(rip), m[2], state)
	}
	return b.String()
}

// symbols are a kernel's function symbols, sorted by address.
type symbols struct {
	addr []uint64
	name []string
	size []uint64
}

// loadSymbols reads a kernel's function symbols from the System.map in
// dir or else from the symbol table of dir/vmlinux; nil if neither has any.
func loadSymbols(dir string) *symbols {
	if s := readSystemMap(filepath.Join(dir, "System.map")); s != nil {
		return s
	}
	f, err := elf.Open(filepath.Join(dir, "vmlinux"))
	if err != nil {
		return nil
	}
	defer f.Close()
	all, err := f.Symbols()
	if err != nil {
		return nil
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Value < all[j].Value })
	s := &symbols{}
	for _, x := range all {
		if elf.ST_TYPE(x.Info) == elf.STT_FUNC && x.Value != 0 {
			s.add(x.Value, x.Name, x.Size)
		}
	}
	return s
}

// systemMapReach is how far past a System.map symbol, which has no size,
// an address is still taken to be in it.
const systemMapReach = 64 << 10

// readSystemMap reads the text symbols of a System.map ("ADDR t name").
func readSystemMap(path string) *symbols {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	s := &symbols{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 3 || !strings.ContainsAny(fs[1], "TtWw") {
			continue
		}
		if a, err := strconv.ParseUint(fs[0], 16, 64); err == nil {
			s.add(a, fs[2], systemMapReach)
		}
	}
	if len(s.addr) == 0 {
		return nil
	}
	// Sizes end at the next symbol.
	idx := make([]int, len(s.addr))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(i, j int) bool { return s.addr[idx[i]] < s.addr[idx[j]] })
	o := &symbols{}
	for k, i := range idx {
		size := s.size[i]
		if k+1 < len(idx) {
			size = min(size, s.addr[idx[k+1]]-s.addr[i])
		}
		o.add(s.addr[i], s.name[i], size)
	}
	return o
}

func (s *symbols) add(a uint64, name string, size uint64) {
	s.addr, s.name, s.size = append(s.addr, a), append(s.name, name), append(s.size, size)
}

// lookup is " (symbol+0xoff)" for an address inside a known function.
func (s *symbols) lookup(a uint64) string {
	if s == nil {
		return ""
	}
	i := sort.Search(len(s.addr), func(i int) bool { return s.addr[i] > a }) - 1
	if i < 0 || a-s.addr[i] >= max(s.size[i], 1) {
		return ""
	}
	return fmt.Sprintf(" (%s+%#x)", s.name[i], a-s.addr[i])
}
