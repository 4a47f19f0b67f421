package e2e

import (
	"os"
	"os/exec"
	"testing"
)

// listenEnv set to "unix" runs every replica of the local stack on a Unix domain
// socket, reached by the stand-in through the pipe addresses of the Envoy
// configuration generated for them.
const listenEnv = "KEYPOOL_E2E_LISTEN"

// suiteOverSocket are the scenarios run a second time over Unix sockets: every
// request path (failover, exhaustion, BYOK, shared marks, concurrency). Tests that
// kill Redis or replicas are about processes, not the transport, and run once.
const suiteOverSocket = `^(TestHappyPathUsesTheFirstKey|TestRateLimitedKeyFailsOverAndCools|TestAllKeysRateLimitedGivesTypedRetryableError|TestAllKeysUnauthorizedGives502|TestBYOK.*|TestMarkThroughOneReplicaIsSeenByTheOther|TestOverloadIsNotAKeyFailure|TestConcurrentClientsWithFailingKeys|TestReloadThroughTheStack)$`

// TestSuiteOverUnixSocket runs the end-to-end scenarios again with envoy-keypool
// listening on Unix sockets, as a sidecar deployment does, in a child run of this
// test binary.
func TestSuiteOverUnixSocket(t *testing.T) {
	if os.Getenv("KEYPOOL_E2E_TARGET") == "compose" {
		t.Skip("the compose stack listens on TCP")
	}
	if os.Getenv(listenEnv) != "" {
		t.Skip("already over the socket")
	}
	if testing.Short() {
		t.Skip("runs the suite a second time")
	}
	args := []string{"-test.run", suiteOverSocket, "-test.count=1"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), listenEnv+"=unix", keypoolBinaryEnv+"="+keypoolBinary)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the suite over Unix sockets failed: %v\n%s", err, out)
	}
	t.Logf("the suite over Unix sockets:\n%s", out)
}
