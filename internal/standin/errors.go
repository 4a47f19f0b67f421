package standin

import "errors"

// ErrUnsupported is returned (wrapped) by New for configuration the stand-in refuses
// to load because it does not reproduce what Envoy would do with it. Test with
// errors.Is.
var ErrUnsupported = errors.New("not supported by the envoy stand-in")
