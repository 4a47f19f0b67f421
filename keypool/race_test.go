//go:build race

package keypool_test

// raceEnabled: the race detector slows the memory test's million requests tenfold.
const raceEnabled = true
