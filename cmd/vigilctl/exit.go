package main

import (
	"errors"
	"flag"
	"fmt"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// vigilctl's exit statuses, as the usage (exitStatusHelp) and the docs list
// them.
const (
	exitOK = 0
	// exitError: the call failed (the aggregator unreachable, or it
	// refused the call).
	exitError = 1
	// exitUsage: the command line, the environment or the files they name
	// are wrong; nothing was sent.
	exitUsage = 2
	// exitNotDone: the action was not carried out (suppressed, failed,
	// fenced, refused, not found, expired, cancelled).
	exitNotDone = 3
	// exitOutcomeUnknown: whether the action was carried out is not known
	// (no result within --timeout with --wait, or the aggregator marked it
	// unknown: sent, and no result came).
	exitOutcomeUnknown = 4
)

const exitStatusHelp = `Exit status:
  0  done: a listing printed; an action carried out (with --wait), accepted
     and queued for the agent (without --wait), or a dry run that would act
  1  the call failed: the aggregator is unreachable or refused the call
  2  the command line is wrong (or the environment, or a file it names):
     nothing was sent
  3  the action was not carried out: suppressed (the reason is on stderr),
     failed, fenced, refused, not found, expired or cancelled
  4  whether the action was carried out is not known: --wait saw no result
     within --timeout, or the aggregator marked it unknown (sent, no result)
`

// exitCode is the exit status for what run returned.
func exitCode(err error) int {
	var u *usageError
	var nd *notDoneError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &u):
		return exitUsage
	case errors.As(err, &nd):
		return nd.code
	}
	return exitError
}

// usageError is a wrong command line: nothing was sent. It is
// errdefs.ErrInvalid. usage, when set, is the usage text to print with it
// (for mistakes in the words: flags, commands, arguments).
type usageError struct {
	msg   string
	usage string
}

func (e *usageError) Error() string        { return e.msg }
func (e *usageError) Is(target error) bool { return target == errdefs.ErrInvalid }

// usagef is a usageError printed without the usage.
func usagef(format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...)}
}

// helpRequest is -h or --help: usage is printed on stdout, and vigilctl
// exits 0. It is flag.ErrHelp.
type helpRequest struct{ usage string }

func (h *helpRequest) Error() string        { return "help requested" }
func (h *helpRequest) Is(target error) bool { return target == flag.ErrHelp }

// notDoneError is an action that was not carried out (code exitNotDone),
// or whose outcome is not known (exitOutcomeUnknown); its message says why.
type notDoneError struct {
	code int
	msg  string
}

func (e *notDoneError) Error() string { return e.msg }
