package standin

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
)

// checkOp is the kind of header change being checked, as CheckOperation in
// source/extensions/filters/common/mutation_rules/mutation_rules.h.
type checkOp int

const (
	opSet checkOp = iota
	opAppend
	opRemove
)

// checkResult mirrors MutationRules::CheckResult.
type checkResult int

const (
	checkOK checkResult = iota
	// checkIgnore: the change is dropped and counted (rejected_header_mutations).
	checkIgnore
	// checkFail: the whole ext_proc message is an error (disallow_is_error).
	checkFail
)

// mutationChecker reproduces Checker in
// source/extensions/filters/common/mutation_rules/mutation_rules.cc: by default every
// header may change except host, :authority, :scheme, :method and x-envoy-*; removing
// host or any ":" header is never allowed; a disallowed change is ignored unless
// disallow_is_error turns it into an error.
type mutationChecker struct {
	allowAllRouting bool
	allowEnvoy      bool
	disallowSystem  bool
	disallowAll     bool
	disallowIsError bool
	allowExpr       *regexp.Regexp
	disallowExpr    *regexp.Regexp
}

func newMutationChecker(r *mutationrulesv3.HeaderMutationRules) (*mutationChecker, error) {
	c := &mutationChecker{}
	if r == nil {
		return c, nil
	}
	c.allowAllRouting = r.GetAllowAllRouting().GetValue()
	c.allowEnvoy = r.GetAllowEnvoy().GetValue()
	c.disallowSystem = r.GetDisallowSystem().GetValue()
	c.disallowAll = r.GetDisallowAll().GetValue()
	c.disallowIsError = r.GetDisallowIsError().GetValue()
	var err error
	if r.GetAllowExpression() != nil {
		if c.allowExpr, err = compileFullRegex(r.GetAllowExpression().GetRegex()); err != nil {
			return nil, fmt.Errorf("mutation_rules.allow_expression: %w", err)
		}
	}
	if r.GetDisallowExpression() != nil {
		if c.disallowExpr, err = compileFullRegex(r.GetDisallowExpression().GetRegex()); err != nil {
			return nil, fmt.Errorf("mutation_rules.disallow_expression: %w", err)
		}
	}
	return c, nil
}

// compileFullRegex compiles an RE2 pattern that must match the whole input, as
// Envoy's RegexMatcher does (RE2::FullMatch). Go's regexp is RE2 too.
func compileFullRegex(pattern string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + pattern + `)$`)
	if err != nil {
		return nil, fmt.Errorf("compile regex %q: %w", pattern, err)
	}
	return re, nil
}

// routingHeaders may change only with allow_all_routing.
var routingHeaders = map[string]bool{"host": true, ":authority": true, ":method": true, ":scheme": true}

func (c *mutationChecker) check(op checkOp, name, value string) checkResult {
	if c.isAllowed(op, name) && (op == opRemove || validMutationValue(name, value)) {
		return checkOK
	}
	if c.disallowIsError {
		return checkFail
	}
	return checkIgnore
}

func (c *mutationChecker) isAllowed(op checkOp, name string) bool {
	if op == opRemove && (strings.HasPrefix(name, ":") || name == "host") {
		return false
	}
	if c.disallowExpr != nil && c.disallowExpr.MatchString(name) {
		return false
	}
	if c.allowExpr != nil && c.allowExpr.MatchString(name) {
		return true
	}
	if c.disallowAll {
		return false
	}
	if !c.allowAllRouting && routingHeaders[name] {
		return false
	}
	// System headers hold one value, so appending to them is never allowed.
	if strings.HasPrefix(name, ":") && (op == opAppend || c.disallowSystem) {
		return false
	}
	if !c.allowEnvoy && strings.HasPrefix(name, "x-envoy") {
		return false
	}
	return true
}

// validMutationValue is Checker::isValidValue: values of sensitive headers must stay
// usable by the proxy.
func validMutationValue(name, value string) bool {
	if !strings.HasPrefix(name, ":") && !headerValueIsValid(value) {
		return false
	}
	switch name {
	case "host", ":authority":
		return authorityIsValid(value)
	case ":scheme":
		return value == "http" || value == "https"
	case ":status":
		n, err := strconv.ParseUint(value, 10, 32)
		return err == nil && n >= 200
	}
	return true
}

// authorityIsValid accepts a host[:port] without characters that cannot appear in an
// authority (a close reading of HeaderUtility::authorityIsValid).
func authorityIsValid(v string) bool {
	if v == "" {
		return false
	}
	for i := 0; i < len(v); i++ {
		b := v[i]
		switch {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		case strings.IndexByte("-._~!$&'()*+,;=:[]%@", b) >= 0:
		default:
			return false
		}
	}
	return true
}

// headerNameIsValid is HeaderUtility::headerNameIsValid: an RFC 9110 token, upper case
// allowed (HTTP/1 semantics); a pseudo-header is ":" followed by a token.
func headerNameIsValid(name string) bool {
	if strings.HasPrefix(name, ":") {
		name = name[1:]
	}
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if !isTokenChar(name[i]) {
			return false
		}
	}
	return true
}

func isTokenChar(b byte) bool {
	switch {
	case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0
}

// headerValueIsValid is HeaderUtility::headerValueIsValid (oghttp2's
// IsValidHeaderValue with obs-text allowed): no NUL, CR, LF or other control byte
// except horizontal tab.
func headerValueIsValid(v string) bool {
	for i := 0; i < len(v); i++ {
		b := v[i]
		if b == '\t' || (b >= 0x20 && b != 0x7f) {
			continue
		}
		return false
	}
	return true
}
