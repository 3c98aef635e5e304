package nested

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// qmpLimit bounds the whole exchange with a QEMU that may itself be stuck.
const qmpLimit = 5 * time.Second

// vcpuState asks QEMU, over its QMP socket, where each of L1's vCPUs is:
// the report of an L1 that stopped responding says whether its CPUs were
// halted or spinning, and where. L1 boots without address randomization,
// so /proc/kallsyms of any L1 on the same kernel names the addresses
// (Debian ships no symbols with its kernel images). It returns "" when
// QEMU does not answer.
func vcpuState(sock string) string {
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
	return summarizeRegisters(out)
}

var (
	cpuHeader = regexp.MustCompile(`(?m)^CPU#(\d+)`)
	cpuRIP    = regexp.MustCompile(`(?m)^[ER]IP=([0-9a-f]+) .*CPL=(\d).* HLT=(\d)`)
)

// summarizeRegisters turns QEMU's "info registers -a" into one line per
// vCPU: RIP, privilege level and whether it is halted.
func summarizeRegisters(dump string) string {
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
		fmt.Fprintf(&b, "vCPU %s: RIP %#x, CPL %s, %s\n", dump[h[2]:h[3]], rip, m[2], state)
	}
	return b.String()
}
