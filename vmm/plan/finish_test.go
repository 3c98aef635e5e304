package plan

import (
	"strings"
	"testing"

	"github.com/ember-vmm/ember/vmm"
)

// A guest that ends without the command's status is not a success for a
// script; an interactive session that powers off is.
func TestFinishUnreportedEnd(t *testing.T) {
	for _, c := range []struct {
		outcome vmm.Outcome
		command bool
		want    int
	}{
		{vmm.OutcomeReset, true, ExitPanic},
		{vmm.OutcomePowerOff, true, ExitPanic},
		{vmm.OutcomeReset, false, 0},
		{vmm.OutcomePowerOff, false, 0},
		{vmm.OutcomeExited, true, 0},
	} {
		rep := &Report{}
		Finish(rep, &vmm.Result{Outcome: c.outcome, Reason: "i8042 reset"}, c.command)
		if rep.ExitStatus != c.want {
			t.Errorf("%s (command %v): exit %d, want %d", c.outcome, c.command, rep.ExitStatus, c.want)
		}
		if c.want == ExitPanic && !strings.Contains(rep.Message, "before the command reported") {
			t.Errorf("%s: message %q", c.outcome, rep.Message)
		}
	}
}
