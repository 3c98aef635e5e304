package bench

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// Report is what ember bench prints (and its --json output).
type Report struct {
	// Accel is how the VMs ran: kvm, or nested (everything in the table
	// marked L1 ran inside one nested L1 guest).
	Accel     string   `json:"accel"`
	Kernel    string   `json:"kernel"`
	Cmdline   string   `json:"cmdline"`
	MemoryMiB int      `json:"memory_mib"`
	Runs      int      `json:"runs"`
	Results   []Result `json:"results,omitempty"`
	// Density holds a --density run's measurements.
	Density  []DensityResult `json:"density,omitempty"`
	L1BootMS float64         `json:"l1_boot_ms,omitempty"`
	Seconds  float64         `json:"seconds"`
	// Notes say how to read the numbers.
	Notes []string `json:"notes,omitempty"`
}

// Find is the result named name measured where, or nil.
func (r *Report) Find(name, where string) *Result {
	for i := range r.Results {
		if x := &r.Results[i]; x.Name == name && x.Where == where && x.Available {
			return x
		}
	}
	return nil
}

// Ratios are the comparisons the table ends with: ember's median time to
// first output against QEMU microvm's and crun's measured in the same
// place.
func (r *Report) Ratios() []string {
	var out []string
	for _, where := range []string{"L1", "host"} {
		e := r.Find("ember", where)
		if e == nil {
			continue
		}
		for _, peer := range []string{"qemu-microvm", "qemu-q35", "crun", "runc", "docker"} {
			if p := r.Find(peer, where); p != nil {
				out = append(out, fmt.Sprintf("ember / %s (%s): first output %.2f×, exit %.2f×",
					peer, where, e.Ready.Median/p.Ready.Median, e.Exit.Median/p.Exit.Median))
			}
		}
	}
	return out
}

// Table writes the human report.
func (r *Report) Table(w io.Writer) {
	if len(r.Density) > 0 {
		r.densityTable(w)
	}
	if len(r.Results) == 0 {
		for _, n := range r.Notes {
			fmt.Fprintln(w, "note:", n)
		}
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "CONTENDER\tWHERE\tINIT\tFIRST OUTPUT ms\tp90\tmin\tmax\tEXIT ms\tp90\tRSS MiB\tVMM OVERHEAD MiB\tPRIVATE MiB\tANON MiB\t")
	for _, x := range r.Results {
		if !x.Available {
			continue
		}
		over, priv, anon := "-", "-", "-"
		if x.Kind == "vm" {
			over, priv, anon = fmt.Sprintf("%.1f", x.Memory.Overhead), fmt.Sprintf("%.1f", x.Memory.Private), fmt.Sprintf("%.1f", x.Memory.Anon)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.1f\t%s\t%s\t%s\t\n", x.Name, x.Where, x.Init,
			x.Ready.Median, x.Ready.P90, x.Ready.Min, x.Ready.Max, x.Exit.Median, x.Exit.P90, x.Memory.RSS, over, priv, anon)
	}
	tw.Flush()
	for _, x := range r.Results {
		if !x.Available {
			fmt.Fprintf(w, "not available: %s (%s): %s\n", x.Name, x.Where, x.Reason)
		} else if x.Failed > 0 {
			fmt.Fprintf(w, "%s (%s): %d of %d runs failed and are left out\n", x.Name, x.Where, x.Failed, r.Runs)
		}
	}
	for _, x := range r.Results {
		if len(x.Phases) == 0 {
			continue
		}
		var parts []string
		var sum float64
		for _, p := range x.Phases {
			parts = append(parts, fmt.Sprintf("%s %.0f ms (%d exits)", p.Name, p.MS, p.Exits))
			sum += p.MS
		}
		fmt.Fprintf(w, "%s (%s) phases, medians: %s; together %.0f ms of %.0f ms to exit (%.1f%%)\n",
			x.Name, x.Where, strings.Join(parts, ", "), sum, x.Exit.Median, 100*sum/x.Exit.Median)
	}
	for _, l := range r.Ratios() {
		fmt.Fprintln(w, l)
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "note:", n)
	}
}

// SVG writes the chart: per available contender a bar split into its
// phases (start to first output, first output to exit; medians), with the
// numbers on it, then the contenders that could not run and why.
func (r *Report) SVG(w io.Writer) error {
	if len(r.Results) == 0 && len(r.Density) > 0 {
		return r.densitySVG(w)
	}
	const (
		left, right, top, rowH, barH = 250.0, 230.0, 90.0, 34.0, 20.0
		width                        = 1000.0
	)
	var rows []Result
	var longest float64
	for _, x := range r.Results {
		if x.Available {
			rows = append(rows, x)
			longest = max(longest, x.Exit.Median)
		}
	}
	var skipped []Result
	for _, x := range r.Results {
		if !x.Available {
			skipped = append(skipped, x)
		}
	}
	lines := len(skipped)
	for _, n := range r.Notes {
		lines += len(wrap(n, 150))
	}
	height := top + rowH*float64(len(rows)) + 50 + 18*float64(lines)
	scale := 0.0
	if longest > 0 {
		scale = (width - left - right) / longest
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="13">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="10" y="24" font-size="17" font-weight="bold">%s</text>`+"\n",
		esc(fmt.Sprintf("Boot to first output and exit, median of %d runs (accel %s, kernel %s, %d MiB)", r.Runs, r.Accel, r.Kernel, r.MemoryMiB)))
	legend := []struct{ color, label string }{{"#e4572e", "start to first output"}, {"#76b041", "first output to exit"}, {"#3b6fb6", "ember: its own phases"}}
	for i, l := range legend {
		x := 10 + 220*float64(i)
		fmt.Fprintf(&b, `<rect x="%.0f" y="38" width="14" height="14" fill="%s"/><text x="%.0f" y="50">%s</text>`+"\n", x, l.color, x+20, esc(l.label))
	}
	// Every phase name the ember rows have, in order of appearance.
	var named []string
	for _, x := range rows {
		for _, p := range x.Phases {
			if !slices.Contains(named, p.Name) {
				named = append(named, p.Name)
			}
		}
	}
	px := 10.0
	for _, n := range named {
		fmt.Fprintf(&b, `<rect x="%.0f" y="60" width="10" height="10" fill="%s"/><text x="%.0f" y="70" font-size="11">%s</text>`+"\n", px, phaseColor(n), px+13, esc(n))
		px += 13 + 7*float64(len(n)) + 14
	}
	for i, x := range rows {
		y := top + rowH*float64(i)
		label := fmt.Sprintf("%s [%s]", x.Name, x.Where)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end">%s</text>`+"\n", left-8, y+barH-5, esc(label))
		w1 := x.Ready.Median * scale
		w2 := max(x.Exit.Median-x.Ready.Median, 0) * scale
		if len(x.Phases) > 0 {
			// ember's own timeline; what is left of the measured time is
			// exec before ember's main and the process's exit.
			at := left
			var sum float64
			for _, p := range x.Phases {
				pw := p.MS * scale
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.0f" width="%.1f" height="%.0f" fill="%s"><title>%s</title></rect>`+"\n",
					at, y, pw, barH, phaseColor(p.Name), esc(fmt.Sprintf("%s: %s %.0f ms, %d exits", x.Name, p.Name, p.MS, p.Exits)))
				if pw > 70 {
					fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" fill="white" font-size="11">%s</text>`+"\n", at+3, y+barH-6, esc(fmt.Sprintf("%s %.0f", p.Name, p.MS)))
				}
				at += pw
				sum += p.MS
			}
			if rest := (x.Exit.Median - sum) * scale; rest > 0 {
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.0f" width="%.1f" height="%.0f" fill="#bbb"><title>%s</title></rect>`+"\n",
					at, y, rest, barH, esc(fmt.Sprintf("%s: exec and exit outside ember's timeline, %.0f ms", x.Name, x.Exit.Median-sum)))
			}
			w1, w2 = x.Exit.Median*scale, 0
		} else {
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.0f" width="%.1f" height="%.0f" fill="%s"><title>%s</title></rect>`+"\n",
				left, y, w1, barH, legend[0].color, esc(fmt.Sprintf("%s: first output at %.0f ms", x.Name, x.Ready.Median)))
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.0f" width="%.1f" height="%.0f" fill="%s"><title>%s</title></rect>`+"\n",
				left+w1, y, w2, barH, legend[1].color, esc(fmt.Sprintf("%s: exit at %.0f ms", x.Name, x.Exit.Median)))
			if w1 > 60 {
				fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" fill="white">%.0f ms</text>`+"\n", left+4, y+barH-5, x.Ready.Median)
			}
		}
		mem := fmt.Sprintf("%.1f MiB RSS", x.Memory.RSS)
		if x.Kind == "vm" {
			mem = fmt.Sprintf("%.1f MiB overhead", x.Memory.Overhead)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f">%s</text>`+"\n", left+w1+w2+6, y+barH-5, esc(fmt.Sprintf("%.0f ms, %s", x.Exit.Median, mem)))
	}
	y := top + rowH*float64(len(rows)) + 20
	for _, x := range skipped {
		fmt.Fprintf(&b, `<text x="10" y="%.0f" fill="#777">%s</text>`+"\n", y, esc(fmt.Sprintf("not available: %s [%s]: %s", x.Name, x.Where, x.Reason)))
		y += 18
	}
	for _, n := range r.Notes {
		for _, l := range wrap(n, 150) {
			fmt.Fprintf(&b, `<text x="10" y="%.0f" fill="#444">%s</text>`+"\n", y, esc(l))
			y += 18
		}
	}
	b.WriteString("</svg>\n")
	_, err := w.Write(b.Bytes())
	return err
}

// wrap breaks s into lines of at most n bytes at spaces.
func wrap(s string, n int) []string {
	var out []string
	for len(s) > n {
		i := strings.LastIndexByte(s[:n+1], ' ')
		if i <= 0 {
			i = n
		}
		out = append(out, s[:i])
		s = strings.TrimLeft(s[i:], " ")
	}
	return append(out, s)
}

// phaseColor is a phase's color: blues and teals, apart from the
// two-phase bars of the other contenders.
func phaseColor(name string) string {
	switch name {
	case "resolve":
		return "#0b1f45"
	case "exec":
		return "#16305c"
	case "setup":
		return "#1f3b73"
	case "vcpu start":
		return "#3b6fb6"
	case "kernel", "guest":
		return "#5b9bd5"
	case "init":
		return "#2a9d8f"
	case "command":
		return "#52b69a"
	case "power-off":
		return "#99d98c"
	case "teardown":
		return "#6c757d"
	}
	return "#adb5bd"
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func (r *Report) densityTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "IDLE INSTANCES\tWHERE\tN\tALL UP ms\tHOST MiB EACH\tPSS MiB EACH\t")
	for _, x := range r.Density {
		if x.Available {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%.1f\t%.1f\t\n", x.Name, x.Where, x.N, x.StartAllMS, x.HostMiB, x.PSSMiB)
		}
	}
	tw.Flush()
	for _, x := range r.Density {
		if !x.Available {
			fmt.Fprintf(w, "not available: %s (%s): %s\n", x.Name, x.Where, x.Reason)
		}
	}
}

// densitySVG charts a --density run: host memory per idle instance, with
// the time to start all of them.
func (r *Report) densitySVG(w io.Writer) error {
	const left, right, top, rowH, barH, width = 250.0, 260.0, 50.0, 34.0, 20.0, 1000.0
	var most float64
	n := 0
	for _, x := range r.Density {
		if x.Available {
			most = max(most, x.HostMiB)
			n = x.N
		}
	}
	height := top + rowH*float64(len(r.Density)) + 40
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="13">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="10" y="24" font-size="17" font-weight="bold">%s</text>`+"\n",
		esc(fmt.Sprintf("Host memory per idle instance, %d started at once (accel %s)", n, r.Accel)))
	for i, x := range r.Density {
		y := top + rowH*float64(i)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end">%s</text>`+"\n", left-8, y+barH-5, esc(fmt.Sprintf("%s [%s]", x.Name, x.Where)))
		if !x.Available {
			fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" fill="#777">%s</text>`+"\n", left, y+barH-5, esc("not available: "+x.Reason))
			continue
		}
		bw := 0.0
		if most > 0 {
			bw = x.HostMiB / most * (width - left - right)
		}
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.1f" height="%.0f" fill="#3b6fb6"/>`+"\n", left, y, bw, barH)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f">%s</text>`+"\n", left+bw+6, y+barH-5,
			esc(fmt.Sprintf("%.1f MiB each, all %d up in %.0f ms", x.HostMiB, x.N, x.StartAllMS)))
	}
	b.WriteString("</svg>\n")
	_, err := w.Write(b.Bytes())
	return err
}
