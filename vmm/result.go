package vmm

import "time"

// Outcome is how a VM run ended.
type Outcome string

// Outcomes of Machine.Run.
const (
	// OutcomeExited: the guest init reported the command's exit status.
	OutcomeExited Outcome = "exited"
	// OutcomeInitFailed: the guest init could not run the command.
	OutcomeInitFailed Outcome = "init-failed"
	// OutcomePowerOff: the guest powered off without a status: through
	// ACPI S5, a KVM shutdown event, or by halting every vCPU for good.
	OutcomePowerOff Outcome = "poweroff"
	// OutcomeReset: the guest rebooted (i8042 reset, a KVM reset event)
	// without a status; with Panic set, after a kernel panic.
	OutcomeReset Outcome = "reset"
	// OutcomeCrash: a vCPU triple-faulted (a real CPU would reset): the
	// guest crashed without a word.
	OutcomeCrash Outcome = "crash"
	// OutcomePanic: the guest kernel panicked, or reported a crash.
	OutcomePanic Outcome = "panic"
	// OutcomeTimeout: the run's deadline passed.
	OutcomeTimeout Outcome = "timeout"
	// OutcomeCanceled: the run was canceled (signal, Ctrl-A x).
	OutcomeCanceled Outcome = "canceled"
	// OutcomeError: a host-side failure ended the run.
	OutcomeError Outcome = "error"
)

// Result describes a finished run.
type Result struct {
	Outcome Outcome
	// Status is the guest command's exit status (OutcomeExited).
	Status int
	// BootTime is from New to the guest init's first instruction in
	// userspace (as reported through the control port); 0 if never reached.
	BootTime time.Duration
	// CommandStart is from New to the start of the guest command.
	CommandStart time.Duration
	// Wall is from New to the end of the run.
	Wall time.Duration
	// Panic is the kernel's panic line, when one was seen on the console.
	Panic string
	// Exits counts VM exits by reason name.
	Exits map[string]uint64
	// StoppedAt is each vCPU's instruction pointer when a run that was
	// still going was stopped (timeout, cancel) or crashed: where a stuck
	// guest is (the code there is logged at debug level).
	StoppedAt []uint64
	// Devices holds each virtio device's counters by device name.
	Devices map[string]map[string]uint64
	// ExitsByDevice counts the port-I/O and MMIO exits by the device that
	// served them ("pio:serial", "mmio:unclaimed", ...).
	ExitsByDevice map[string]uint64
	// Unclaimed counts guest accesses no device handled.
	Unclaimed uint64
	// ConsoleDropped counts guest console bytes that never reached the
	// host (its reader did not keep up).
	ConsoleDropped uint64
	// Reason says what ended the run, for outcomes with several causes
	// ("ACPI S5", "all vCPUs halted", "i8042 reset", ...).
	Reason string
	// Err is the host-side error for OutcomeError.
	Err error
	// Marks are the moments of the run in order (MarkCreated, ...), for a
	// phase timeline.
	Marks []Mark
}

// Mark is a moment of a machine's life: when, and how many VM exits all
// vCPUs had taken by then.
type Mark struct {
	Name  string
	At    time.Time
	Exits uint64
}

// Mark names, in the order they happen.
const (
	MarkCreated     = "created"      // New has built the VM (memory, devices, kernel loaded)
	MarkFirstRun    = "first_run"    // vCPU 0 enters KVM_RUN at the kernel's entry point
	MarkInit        = "init"         // the guest init reports its start (ember's init only)
	MarkCommand     = "command"      // the guest command starts
	MarkCommandExit = "command_exit" // the command's status arrives
	MarkEnded       = "ended"        // the guest ended (power-off, reset, crash) or was stopped
)
