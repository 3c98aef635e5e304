package launch

import (
	"bytes"
	"encoding/xml"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ember-vmm/ember/vmm"
	"github.com/ember-vmm/ember/vmm/plan"
)

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		rep  *plan.Report
		err  error
		want string
	}{
		{&plan.Report{Outcome: vmm.OutcomeExited, BootMS: 1}, nil, ResultPassed},
		{&plan.Report{Outcome: vmm.OutcomeExited, ExitStatus: 3, BootMS: 1}, nil, ResultFailed},
		{&plan.Report{Outcome: vmm.OutcomeInitFailed, ExitStatus: 127, BootMS: 1}, nil, ResultFailed},
		{&plan.Report{Outcome: vmm.OutcomePanic, ExitStatus: 123}, nil, ResultPanicked},
		{&plan.Report{Outcome: vmm.OutcomeCrash, ExitStatus: 123, BootMS: 1}, nil, ResultPanicked},
		{&plan.Report{Outcome: vmm.OutcomeTimeout, ExitStatus: 124, BootMS: 1}, nil, ResultTimedOut},
		{&plan.Report{Outcome: vmm.OutcomeTimeout, ExitStatus: 124}, nil, ResultBootFailed},
		{&plan.Report{Outcome: vmm.OutcomeReset}, nil, ResultBootFailed},
		{&plan.Report{Outcome: vmm.OutcomePowerOff, BootMS: 1}, nil, ResultFailed},
		{nil, errors.New("no kernel"), ResultError},
	} {
		if got := classify(c.rep, c.err); got.Result != c.want {
			t.Errorf("%+v %v: %s, want %s", c.rep, c.err, got.Result, c.want)
		}
	}
}

func TestWriteJUnit(t *testing.T) {
	rep := &MatrixReport{Source: "/x/m.toml", Seconds: 2, Targets: []TargetResult{
		{Name: "ok", Result: ResultPassed},
		{Name: "bad", Result: ResultFailed, Message: "exit status 1", Log: "a\x00b\x1b[0m\xffc\r\n"},
		{Name: "boot", Result: ResultBootFailed, Message: "no init"},
	}}
	var b bytes.Buffer
	if err := WriteJUnit(&b, rep, time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Suite struct {
			Tests    int `xml:"tests,attr"`
			Failures int `xml:"failures,attr"`
			Errors   int `xml:"errors,attr"`
			Cases    []struct {
				Failure *struct {
					Type string `xml:"type,attr"`
				} `xml:"failure"`
				Error *struct {
					Type string `xml:"type,attr"`
				} `xml:"error"`
				Out string `xml:"system-out"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	s := doc.Suite
	if s.Tests != 3 || s.Failures != 1 || s.Errors != 1 || s.Cases[0].Failure != nil || s.Cases[1].Failure.Type != ResultFailed ||
		s.Cases[2].Error.Type != ResultBootFailed {
		t.Fatalf("%+v\n%s", s, b.String())
	}
	if out := s.Cases[1].Out; strings.ContainsAny(out, "\x00\x1b") || !strings.Contains(out, "[0m") || !strings.HasSuffix(out, "c\r\n") {
		t.Fatalf("log %q: control characters must go, the rest stay", out)
	}
}
