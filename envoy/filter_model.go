package envoy

import (
	"strconv"
	"strings"

	xdscorev3 "github.com/cncf/xds/go/xds/core/v3"
	xdsmatcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	matchingv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	skipv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/matcher/action/v3"
	jsontometadatav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	envoymatcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// jsonContentType matches application/json with parameters ("; charset=utf-8", which
// the Python SDKs send). json_to_metadata compares allow_content_types exactly
// (json_to_metadata/filter.cc requestContentTypeAllowed), so the regex is needed.
const jsonContentType = `^application/json(\s*;.*)?$`

// bodyNamesModel reports whether a provider's requests name their model in the JSON
// body ("model"), so that Envoy extracts it before routing. Gemini names it in the
// path, which envoy-keypool reads itself; its routes skip the body filter.
func bodyNamesModel(provider string) bool {
	return provider != "gemini"
}

// modelFilter is json_to_metadata in the downstream chain, reading the body's "model"
// into the dynamic metadata envoy-keypool's ext_proc filters forward
// (ModelMetadataNamespace/ModelMetadataKey). It is wrapped in a matcher
// (ExtensionWithMatcher, the match_delegate filter) that skips it unless the request
// has a content-length of at most modelBodyLimit(bufferLimit): json_to_metadata
// buffers the whole body (filter.cc decodeData, StopIterationAndBuffer) and a body past
// the stream's buffer limit would be answered 413 (filter_manager.cc
// requestDataTooLarge) instead of being proxied. Skipped, a request is proxied as
// before and envoy-keypool scopes its failures key-wide. A body that is not JSON, not
// an object, or without a string "model" sets nothing (no on_missing, no on_error):
// the same fallback.
func modelFilter(bufferLimit int64) *hcmv3.HttpFilter {
	inner := &jsontometadatav3.JsonToMetadata{RequestRules: &jsontometadatav3.JsonToMetadata_MatchRules{
		Rules: []*jsontometadatav3.JsonToMetadata_Rule{{
			Selectors: []*jsontometadatav3.JsonToMetadata_Selector{{Selector: &jsontometadatav3.JsonToMetadata_Selector_Key{Key: "model"}}},
			OnPresent: &jsontometadatav3.JsonToMetadata_KeyValuePair{
				MetadataNamespace: ModelMetadataNamespace,
				Key:               ModelMetadataKey,
				// A string over 8 KiB or not convertible is dropped (filter.cc
				// handleOnPresent): nothing is set.
				Type: jsontometadatav3.JsonToMetadata_STRING,
			},
		}},
		AllowContentTypes:      []string{"application/json"},
		AllowContentTypesRegex: &envoymatcherv3.RegexMatcher{Regex: jsonContentType},
	}}
	skipUnlessBounded := &xdsmatcherv3.Matcher{MatcherType: &xdsmatcherv3.Matcher_MatcherList_{MatcherList: &xdsmatcherv3.Matcher_MatcherList{
		Matchers: []*xdsmatcherv3.Matcher_MatcherList_FieldMatcher{{
			Predicate: &xdsmatcherv3.Matcher_MatcherList_Predicate{MatchType: &xdsmatcherv3.Matcher_MatcherList_Predicate_NotMatcher{
				NotMatcher: &xdsmatcherv3.Matcher_MatcherList_Predicate{MatchType: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate_{
					SinglePredicate: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate{
						// An absent header matches nothing, so the NOT matches and the
						// filter is skipped (common/matcher/field_matcher.h,
						// value_input_matcher.h).
						Input: &xdscorev3.TypedExtensionConfig{
							Name:        "content-length",
							TypedConfig: mustAny(&envoymatcherv3.HttpRequestHeaderMatchInput{HeaderName: "content-length"}),
						},
						Matcher: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate_ValueMatch{ValueMatch: &xdsmatcherv3.StringMatcher{
							MatchPattern: &xdsmatcherv3.StringMatcher_SafeRegex{SafeRegex: &xdsmatcherv3.RegexMatcher{
								Regex:      contentLengthAtMost(modelBodyLimit(bufferLimit)),
								EngineType: &xdsmatcherv3.RegexMatcher_GoogleRe2{GoogleRe2: &xdsmatcherv3.RegexMatcher_GoogleRE2{}},
							}},
						}},
					},
				}},
			}},
			OnMatch: &xdsmatcherv3.Matcher_OnMatch{OnMatch: &xdsmatcherv3.Matcher_OnMatch_Action{Action: &xdscorev3.TypedExtensionConfig{
				Name:        "skip",
				TypedConfig: mustAny(&skipv3.SkipFilter{}),
			}}},
		}},
	}}}
	return httpFilter(nameJSONToMetadata, &matchingv3.ExtensionWithMatcher{
		XdsMatcher: skipUnlessBounded,
		ExtensionConfig: &corev3.TypedExtensionConfig{
			Name:        nameJSONToMetadata,
			TypedConfig: mustAny(inner),
		},
	})
}

// modelBodyLimit is the largest body whose model Envoy reads: the largest number of
// the form d·10^k − 1 (d a digit) that is at most the buffer limit. It loses at most
// one leading digit's step of the limit (32 MiB = 33,554,432 gives 29,999,999) and
// keeps the regex that matches it to two alternatives: Envoy refuses a regex whose
// compiled program exceeds 100 instructions (common/common/regex.cc,
// re2.max_program_size.error_level).
func modelBodyLimit(bufferLimit int64) int64 {
	s := strconv.FormatInt(bufferLimit, 10)
	lead := int64(s[0] - '0')
	pow := int64(1)
	for range len(s) - 1 {
		pow *= 10
	}
	return lead*pow - 1
}

// contentLengthAtMost is a regex matching the decimal numbers 0…limit, for a limit of
// the form d·10^k − 1 (modelBodyLimit's).
func contentLengthAtMost(limit int64) string {
	s := strconv.FormatInt(limit, 10)
	if strings.Trim(s, "9") == "" { // 9, 99, …: every number of up to len(s) digits
		return "^[0-9]{1," + strconv.Itoa(len(s)) + "}$"
	}
	// d·10^k − 1 = (d−1) followed by k nines: numbers of up to k digits, or k+1
	// digits led by 1…d−1.
	k := len(s) - 1
	top := string(s[0])
	lead := "1"
	if top != "1" {
		lead = "[1-" + top + "]"
	}
	if k == 0 {
		return "^[0-" + top + "]$"
	}
	return "^([0-9]{1," + strconv.Itoa(k) + "}|" + lead + "[0-9]{" + strconv.Itoa(k) + "})$"
}
