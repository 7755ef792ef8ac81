// Package netns is the agent's one way into a network namespace: it runs a
// function on an OS thread moved into the namespace and moves the thread
// back (or retires it), and it is the one place that spells the path of a
// process's namespace file.
//
// A thread that cannot be moved back is never handed to another goroutine:
// it stays locked to a goroutine that exits, and the Go runtime then ends
// the thread instead of reusing it.
package netns
