// Package crash holds the agent's crash test: containers exiting under
// restart policies while the agent binary is SIGKILLed at random moments,
// ending with every exit counted exactly once and no exit restarted twice.
package crash
