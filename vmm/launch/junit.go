package launch

import (
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"
)

// JUnit XML in the shape Jenkins, GitLab and most CI systems read
// (testsuites > testsuite > testcase, a failure or error child for what
// did not pass, the console log as system-out). Each result is told
// apart by the child and its type: failed and panicked and timed-out are
// failures of those types; boot-failed and error are errors.
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name      string      `xml:"name,attr"`
	Tests     int         `xml:"tests,attr"`
	Failures  int         `xml:"failures,attr"`
	Errors    int         `xml:"errors,attr"`
	Skipped   int         `xml:"skipped,attr"`
	Time      string      `xml:"time,attr"`
	Timestamp string      `xml:"timestamp,attr"`
	Hostname  string      `xml:"hostname,attr"`
	Cases     []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitProblem `xml:"failure,omitempty"`
	Error     *junitProblem `xml:"error,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitProblem struct {
	Type    string `xml:"type,attr"`
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

// WriteJUnit writes rep as JUnit XML.
func WriteJUnit(w io.Writer, rep *MatrixReport, started time.Time) error {
	host, _ := os.Hostname()
	suite := strings.TrimSuffix(filepath.Base(rep.Source), filepath.Ext(rep.Source))
	s := junitSuite{Name: "ember test " + suite, Tests: len(rep.Targets), Time: seconds(rep.Seconds),
		Timestamp: started.UTC().Format("2006-01-02T15:04:05"), Hostname: host}
	for _, t := range rep.Targets {
		c := junitCase{Name: t.Name, Classname: "ember." + suite, Time: seconds(t.Seconds), SystemOut: xmlText(t.Log)}
		what := fmt.Sprintf("%s on %s with %d vCPUs: %s", t.Name, t.Kernel, t.CPUs, t.Result)
		if t.Message != "" {
			what += ": " + t.Message
		}
		p := &junitProblem{Type: t.Result, Message: xmlText(t.Message), Text: xmlText(what)}
		switch t.Result {
		case ResultPassed:
		case ResultFailed, ResultPanicked, ResultTimedOut:
			c.Failure = p
			s.Failures++
		default:
			c.Error = p
			s.Errors++
		}
		s.Cases = append(s.Cases, c)
	}
	doc := junitSuites{Name: "ember", Tests: s.Tests, Failures: s.Failures, Errors: s.Errors, Time: s.Time,
		Suites: []junitSuite{s}}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func seconds(s float64) string { return fmt.Sprintf("%.3f", s) }

// xmlText drops what XML 1.0 cannot carry (control characters other than
// tab, CR and LF, invalid UTF-8): console logs are raw guest output.
func xmlText(s string) string {
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			b.WriteRune('\uFFFD')
		case r == '\t' || r == '\n' || r == '\r' || (r >= 0x20 && r != 0xfffe && r != 0xffff):
			b.WriteRune(r)
		}
	}
	return b.String()
}
