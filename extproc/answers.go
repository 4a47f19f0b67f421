package extproc

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// answers is storage for the two answers every attempt gives (to its request headers
// and to its response headers), kept in the attempt so that building them allocates
// nothing: grpc-go encodes a message before SendMsg returns, and each of the two is
// given at most once per stream (a repeated message gets an answer of its own).
type answers struct {
	reqResp  extprocv3.ProcessingResponse
	reqOneof extprocv3.ProcessingResponse_RequestHeaders
	reqHR    extprocv3.HeadersResponse
	reqCR    extprocv3.CommonResponse
	reqHM    extprocv3.HeaderMutation
	reqSet   [2]*corev3.HeaderValueOption // the key, and a rewritten :path
	reqRm    [credentialSlots + 1]string  // client credentials, the model header

	respResp  extprocv3.ProcessingResponse
	respOneof extprocv3.ProcessingResponse_ResponseHeaders
	respHR    extprocv3.HeadersResponse
	respCR    extprocv3.CommonResponse
	respHM    extprocv3.HeaderMutation
	respSet   [1]*corev3.HeaderValueOption // the retry marker
}

// requestMutation is the empty mutation of the request-headers answer.
func (x *answers) requestMutation() *extprocv3.HeaderMutation {
	x.reqHM.SetHeaders, x.reqHM.RemoveHeaders = x.reqSet[:0], x.reqRm[:0]
	return &x.reqHM
}

// continueRequest is the request-headers answer carrying m (nil: no change).
func (x *answers) continueRequest(m *extprocv3.HeaderMutation) *extprocv3.ProcessingResponse {
	x.reqCR.HeaderMutation = m
	x.reqHR.Response = &x.reqCR
	x.reqOneof.RequestHeaders = &x.reqHR
	x.reqResp.Response = &x.reqOneof
	return &x.reqResp
}

// marker is the response mutation that sets the retry marker option.
func (x *answers) marker(option *corev3.HeaderValueOption) *extprocv3.HeaderMutation {
	x.respSet[0] = option
	x.respHM.SetHeaders = x.respSet[:]
	return &x.respHM
}

// continueResponse is the response-headers answer carrying m (nil: no change).
func (x *answers) continueResponse(m *extprocv3.HeaderMutation) *extprocv3.ProcessingResponse {
	x.respCR.HeaderMutation = m
	x.respHR.Response = &x.respCR
	x.respOneof.ResponseHeaders = &x.respHR
	x.respResp.Response = &x.respOneof
	return &x.respResp
}
