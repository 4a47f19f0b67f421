package envoy

import (
	"errors"
	"fmt"
	"strconv"
)

// Problem is one finding of CheckLoad or CheckKeypool: the field it is about and what
// is wrong with it. The checks return their problems joined in one error
// (errors.Join); Problems lists them.
type Problem struct {
	// Path names the field: the Envoy resource (`cluster "openai"`, `listener "llm"`,
	// `route_configuration "llm"`), then the field path inside it in the proto field
	// names Envoy's YAML and JSON use, e.g.
	// `cluster "openai": typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].retry_policy.num_retries`.
	Path string
	// Message says what is wrong and what it costs.
	Message string
}

func (p *Problem) Error() string { return p.Path + ": " + p.Message }

// Problems lists the problems in err, as CheckLoad and CheckKeypool return them.
// Errors that are not a *Problem are left out.
func Problems(err error) []*Problem {
	var out []*Problem
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if p, ok := err.(*Problem); ok {
			out = append(out, p)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var p *Problem
		if errors.As(err, &p) {
			out = append(out, p)
		}
	}
	walk(err)
	return out
}

// fieldPath is where a field sits: its resource and the path inside it.
type fieldPath struct{ resource, field string }

func resourcePath(kind, name string) fieldPath {
	return fieldPath{resource: kind + " " + strconv.Quote(name)}
}

// f is the field name inside p.
func (p fieldPath) f(name string) fieldPath {
	if p.field == "" {
		return fieldPath{p.resource, name}
	}
	return fieldPath{p.resource, p.field + "." + name}
}

// i is element i of the list p.
func (p fieldPath) i(i int) fieldPath {
	return fieldPath{p.resource, p.field + "[" + strconv.Itoa(i) + "]"}
}

// k is the entry key of the map p.
func (p fieldPath) k(key string) fieldPath {
	return fieldPath{p.resource, p.field + "[" + strconv.Quote(key) + "]"}
}

func (p fieldPath) String() string {
	if p.field == "" {
		return p.resource
	}
	return p.resource + ": " + p.field
}

func (p fieldPath) problem(format string, args ...any) *Problem {
	return &Problem{Path: p.String(), Message: fmt.Sprintf(format, args...)}
}
