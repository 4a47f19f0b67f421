package envoy

import (
	"math/rand/v2"
	"regexp"
	"regexp/syntax"
	"strconv"
	"testing"
)

// The content-length regex matches exactly the decimal numbers up to the model body
// limit, which is at most the buffer limit and more than half of it; the regex stays
// small (Envoy refuses RE2 programs over 100
// instructions; Go's compiled program is a close stand-in for RE2's size).
func TestContentLengthRegexMatchesUpToTheLimit(t *testing.T) {
	for _, limit := range []int64{65536, 99999, 100000, 199999, 1 << 20, 33554432, 1 << 30, 9_999_999_999} {
		bound := modelBodyLimit(limit)
		if bound > limit || bound < limit/2 {
			t.Errorf("limit %d: bound %d", limit, bound)
		}
		expr := contentLengthAtMost(bound)
		re := regexp.MustCompile(expr)
		parsed, err := syntax.Parse(expr, syntax.Perl)
		if err != nil {
			t.Fatal(err)
		}
		prog, err := syntax.Compile(parsed.Simplify())
		if err != nil {
			t.Fatal(err)
		}
		if len(prog.Inst) > 60 {
			t.Errorf("%s: %d instructions", expr, len(prog.Inst))
		}
		r := rand.New(rand.NewPCG(uint64(limit), 1))
		probes := []int64{0, 1, 9, 10, bound - 1, bound, bound + 1, bound * 10, limit, limit + 1}
		for range 2000 {
			probes = append(probes, r.Int64N(bound*3+1))
		}
		for _, n := range probes {
			if n < 0 {
				continue
			}
			if got, want := re.MatchString(strconv.FormatInt(n, 10)), n <= bound; got != want {
				t.Errorf("%s on %d: %v, want %v", expr, n, got, want)
			}
		}
		for _, s := range []string{"", "-1", "1e6", " 12", "12 ", "0x10"} {
			if re.MatchString(s) {
				t.Errorf("%s matches %q", expr, s)
			}
		}
	}
}
