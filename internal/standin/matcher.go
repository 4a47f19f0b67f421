package standin

import (
	"fmt"
	"regexp"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// stringMatcher is envoy.type.matcher.v3.StringMatcher (source/common/common/matchers.cc).
type stringMatcher struct {
	exact, prefix, suffix, contains *string
	re                              *regexp.Regexp
	ignoreCase                      bool
}

func buildStringMatcher(where string, m *matcherv3.StringMatcher) (*stringMatcher, error) {
	if err := onlyFields(where, m, "exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"); err != nil {
		return nil, err
	}
	sm := &stringMatcher{ignoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		sm.exact = &p.Exact
	case *matcherv3.StringMatcher_Prefix:
		sm.prefix = &p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		sm.suffix = &p.Suffix
	case *matcherv3.StringMatcher_Contains:
		sm.contains = &p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := compileFullRegex(p.SafeRegex.GetRegex())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		sm.re = re
	default:
		return nil, fmt.Errorf("%s: %w: string matcher without a supported pattern", where, ErrUnsupported)
	}
	return sm, nil
}

func (m *stringMatcher) match(v string) bool {
	fold := func(s string) string {
		if m.ignoreCase {
			return strings.ToLower(s)
		}
		return s
	}
	switch {
	case m.exact != nil:
		return fold(v) == fold(*m.exact)
	case m.prefix != nil:
		return strings.HasPrefix(fold(v), fold(*m.prefix))
	case m.suffix != nil:
		return strings.HasSuffix(fold(v), fold(*m.suffix))
	case m.contains != nil:
		return strings.Contains(fold(v), fold(*m.contains))
	case m.re != nil:
		return m.re.MatchString(v)
	}
	return false
}

// headerMatcher is envoy.config.route.v3.HeaderMatcher as HeaderUtility::matchHeaders
// applies it: present_match, exact/prefix/suffix/contains, string_match, safe_regex,
// invert_match and treat_missing_header_as_empty. Several values of one header are
// joined with "," before matching, as Envoy does.
type headerMatcher struct {
	name             string
	present          *bool
	str              *stringMatcher
	invert           bool
	missingAsEmpty   bool
	presentOnlyCheck bool
}

func buildHeaderMatcher(where string, m *routev3.HeaderMatcher) (*headerMatcher, error) {
	if err := onlyFields(where, m, "name", "exact_match", "safe_regex_match", "present_match", "prefix_match",
		"suffix_match", "contains_match", "string_match", "invert_match", "treat_missing_header_as_empty"); err != nil {
		return nil, err
	}
	hm := &headerMatcher{name: strings.ToLower(m.GetName()), invert: m.GetInvertMatch(), missingAsEmpty: m.GetTreatMissingHeaderAsEmpty()}
	switch s := m.GetHeaderMatchSpecifier().(type) {
	case nil:
		hm.presentOnlyCheck = true // no specifier: the header must be present.
	case *routev3.HeaderMatcher_PresentMatch:
		v := s.PresentMatch
		hm.present = &v
	case *routev3.HeaderMatcher_ExactMatch:
		hm.str = &stringMatcher{exact: &s.ExactMatch}
	case *routev3.HeaderMatcher_PrefixMatch:
		hm.str = &stringMatcher{prefix: &s.PrefixMatch}
	case *routev3.HeaderMatcher_SuffixMatch:
		hm.str = &stringMatcher{suffix: &s.SuffixMatch}
	case *routev3.HeaderMatcher_ContainsMatch:
		hm.str = &stringMatcher{contains: &s.ContainsMatch}
	case *routev3.HeaderMatcher_SafeRegexMatch:
		re, err := compileFullRegex(s.SafeRegexMatch.GetRegex())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		hm.str = &stringMatcher{re: re}
	case *routev3.HeaderMatcher_StringMatch:
		sm, err := buildStringMatcher(where+" string_match", s.StringMatch)
		if err != nil {
			return nil, err
		}
		hm.str = sm
	default:
		return nil, fmt.Errorf("%s: %w: header matcher %T", where, ErrUnsupported, s)
	}
	return hm, nil
}

func (m *headerMatcher) matches(h *headerMap) bool {
	vals := h.values(m.name)
	present := len(vals) > 0
	if !present && m.missingAsEmpty {
		vals, present = []string{""}, true
	}
	var match bool
	switch {
	case m.presentOnlyCheck:
		match = present
	case m.present != nil:
		// present_match: false matches an absent header (HeaderUtility, Envoy ≥ 1.27).
		match = present == *m.present
	default:
		if !present {
			return false // a value matcher never matches an absent header, even inverted.
		}
		match = m.str.match(strings.Join(vals, ","))
	}
	return match != m.invert
}
