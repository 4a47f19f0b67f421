package standin

import (
	"fmt"
	"strings"

	xdsmatcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	matchingv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	skipactionv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/matcher/action/v3"
	jsontometadatav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
)

const (
	typeJSONToMetadata  = "type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata"
	typeExtWithMatcher  = "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher"
	typeSkipFilter      = "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter"
	typeReqHeaderInput  = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
	typeRouteFilterConf = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
)

// downstreamFilter is one HTTP filter of the connection manager before the router.
// The stand-in runs one kind, json_to_metadata, optionally behind the match_delegate
// filter (ExtensionWithMatcher) that skips it for some requests.
type downstreamFilter struct {
	name     string
	disabled bool // HttpFilter.disabled
	json     *jsonToMetadata
	matcher  *skipMatcher // nil: always runs
}

// buildDownstreamFilter reads an http_filters entry that is not the router.
func buildDownstreamFilter(where string, f *hcmv3.HttpFilter) (*downstreamFilter, error) {
	w := fmt.Sprintf("%s %q", where, f.GetName())
	if err := onlyFields(w, f, "name", "typed_config", "disabled"); err != nil {
		return nil, err
	}
	out := &downstreamFilter{name: f.GetName(), disabled: f.GetDisabled()}
	tc := f.GetTypedConfig()
	if tc.GetTypeUrl() == typeExtWithMatcher {
		ewm := &matchingv3.ExtensionWithMatcher{}
		if err := unpack(w, tc, typeExtWithMatcher, ewm); err != nil {
			return nil, err
		}
		if err := onlyFields(w+" ExtensionWithMatcher", ewm, "xds_matcher", "extension_config"); err != nil {
			return nil, err
		}
		m, err := buildSkipMatcher(w+" xds_matcher", ewm.GetXdsMatcher())
		if err != nil {
			return nil, err
		}
		out.matcher = m
		tc = ewm.GetExtensionConfig().GetTypedConfig()
	}
	j := &jsontometadatav3.JsonToMetadata{}
	if err := unpack(w, tc, typeJSONToMetadata, j); err != nil {
		return nil, err
	}
	var err error
	if out.json, err = buildJSONToMetadata(w, j); err != nil {
		return nil, err
	}
	return out, nil
}

// skipMatcher is the subset of xds.type.matcher.v3.Matcher the stand-in evaluates for
// match_delegate (extensions/filters/http/match_delegate/config.cc): a matcher_list
// whose predicates read request headers (HttpRequestHeaderMatchInput) with string
// matchers, combined with or/and/not, and whose actions are SkipFilter. The first
// field matcher whose predicate holds decides; without one, on_no_match; without
// that, the filter runs (DelegatingStreamFilter::FilterMatchState::evaluateMatchTree).
type skipMatcher struct {
	matchers   []skipFieldMatcher
	noMatch    bool // on_no_match is a SkipFilter
	hasNoMatch bool
}

type skipFieldMatcher struct {
	pred *predicate
	skip bool
}

type predicate struct {
	header string         // single predicate: the request header it reads
	str    *stringMatcher // its value matcher
	or     []*predicate
	and    []*predicate
	not    *predicate
}

func buildSkipMatcher(where string, m *xdsmatcherv3.Matcher) (*skipMatcher, error) {
	if m == nil {
		return nil, fmt.Errorf("%s: %w: only xds_matcher (not the deprecated matcher)", where, ErrUnsupported)
	}
	if err := onlyFields(where, m, "matcher_list", "on_no_match"); err != nil {
		return nil, err
	}
	out := &skipMatcher{}
	for i, fm := range m.GetMatcherList().GetMatchers() {
		w := fmt.Sprintf("%s matcher_list.matchers[%d]", where, i)
		p, err := buildPredicate(w+".predicate", fm.GetPredicate())
		if err != nil {
			return nil, err
		}
		skip, err := skipAction(w+".on_match", fm.GetOnMatch())
		if err != nil {
			return nil, err
		}
		out.matchers = append(out.matchers, skipFieldMatcher{pred: p, skip: skip})
	}
	if nm := m.GetOnNoMatch(); nm != nil {
		skip, err := skipAction(where+" on_no_match", nm)
		if err != nil {
			return nil, err
		}
		out.noMatch, out.hasNoMatch = skip, true
	}
	return out, nil
}

func skipAction(where string, om *xdsmatcherv3.Matcher_OnMatch) (bool, error) {
	if err := onlyFields(where, om, "action"); err != nil {
		return false, err
	}
	a := om.GetAction()
	if a.GetTypedConfig().GetTypeUrl() != typeSkipFilter {
		return false, fmt.Errorf("%s: action %q: %w (only SkipFilter)", where, a.GetTypedConfig().GetTypeUrl(), ErrUnsupported)
	}
	if err := a.GetTypedConfig().UnmarshalTo(&skipactionv3.SkipFilter{}); err != nil {
		return false, fmt.Errorf("%s: %w", where, err)
	}
	return true, nil
}

func buildPredicate(where string, p *xdsmatcherv3.Matcher_MatcherList_Predicate) (*predicate, error) {
	switch t := p.GetMatchType().(type) {
	case *xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate_:
		sp := t.SinglePredicate
		if err := onlyFields(where+" single_predicate", sp, "input", "value_match"); err != nil {
			return nil, err
		}
		in := &matcherv3.HttpRequestHeaderMatchInput{}
		if err := unpack(where+" single_predicate.input", sp.GetInput().GetTypedConfig(), typeReqHeaderInput, in); err != nil {
			return nil, err
		}
		sm, err := buildXdsStringMatcher(where+" single_predicate.value_match", sp.GetValueMatch())
		if err != nil {
			return nil, err
		}
		return &predicate{header: strings.ToLower(in.GetHeaderName()), str: sm}, nil
	case *xdsmatcherv3.Matcher_MatcherList_Predicate_OrMatcher:
		out := &predicate{}
		for i, q := range t.OrMatcher.GetPredicate() {
			c, err := buildPredicate(fmt.Sprintf("%s or_matcher[%d]", where, i), q)
			if err != nil {
				return nil, err
			}
			out.or = append(out.or, c)
		}
		return out, nil
	case *xdsmatcherv3.Matcher_MatcherList_Predicate_AndMatcher:
		out := &predicate{}
		for i, q := range t.AndMatcher.GetPredicate() {
			c, err := buildPredicate(fmt.Sprintf("%s and_matcher[%d]", where, i), q)
			if err != nil {
				return nil, err
			}
			out.and = append(out.and, c)
		}
		return out, nil
	case *xdsmatcherv3.Matcher_MatcherList_Predicate_NotMatcher:
		c, err := buildPredicate(where+" not_matcher", t.NotMatcher)
		if err != nil {
			return nil, err
		}
		return &predicate{not: c}, nil
	}
	return nil, fmt.Errorf("%s: %w: predicate without a supported match type", where, ErrUnsupported)
}

// buildXdsStringMatcher reads xds.type.matcher.v3.StringMatcher like its Envoy twin:
// the two messages (and their RegexMatcher) have the same fields under the same
// numbers, so the xds one is read as Envoy's.
func buildXdsStringMatcher(where string, m *xdsmatcherv3.StringMatcher) (*stringMatcher, error) {
	wire, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	var twin matcherv3.StringMatcher
	if err := proto.Unmarshal(wire, &twin); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return buildStringMatcher(where, &twin)
}

// matches evaluates the predicate on the request headers. An absent header gives the
// input no data, and a value matcher never matches no data (so not_matcher of it
// does); several values of one header are joined with "," (HttpHeaderMatchInput).
func (p *predicate) matches(h *headerMap) bool {
	switch {
	case p.not != nil:
		return !p.not.matches(h)
	case p.or != nil:
		for _, c := range p.or {
			if c.matches(h) {
				return true
			}
		}
		return false
	case p.and != nil:
		for _, c := range p.and {
			if !c.matches(h) {
				return false
			}
		}
		return true
	}
	vals := h.values(p.header)
	if len(vals) == 0 {
		return false
	}
	return p.str.match(strings.Join(vals, ","))
}

// skips reports whether the wrapped filter is skipped for a request with headers h.
func (m *skipMatcher) skips(h *headerMap) bool {
	if m == nil {
		return false
	}
	for _, fm := range m.matchers {
		if fm.pred.matches(h) {
			return fm.skip
		}
	}
	return m.hasNoMatch && m.noMatch
}
