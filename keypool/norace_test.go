//go:build !race

package keypool_test

const raceEnabled = false
