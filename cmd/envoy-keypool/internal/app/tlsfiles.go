package app

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"google.golang.org/grpc/credentials"

	"github.com/envoy-keypool/envoy-keypool/config"
)

// loadServerTLS reads the listener's certificate, key and client CAs into the
// crypto/tls configuration of one handshake. Errors name the field whose file is
// at fault.
func loadServerTLS(t *config.TLS) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("listen.tls.cert_file, listen.tls.key_file: %w", err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		// gRPC speaks HTTP/2 only, and grpc-go refuses a handshake without ALPN.
		NextProtos: []string{"h2"},
	}
	if t.ClientCAFile != "" {
		pem, err := os.ReadFile(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("listen.tls.client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("listen.tls.client_ca_file: no PEM certificate in the file")
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// certificates serves the listener's TLS configuration and replaces it when its
// files change, so a rotated certificate (cert-manager, a mounted Secret) takes
// effect on the next handshake without a restart. Connections already open keep the
// certificate they were made with.
type certificates struct {
	files config.TLS
	cur   atomic.Pointer[tls.Config]
}

func newCertificates(files config.TLS) (*certificates, error) {
	c := &certificates{files: files}
	if err := c.reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// reload reads the files again. On error the certificates in use stay.
func (c *certificates) reload() error {
	cfg, err := loadServerTLS(&c.files)
	if err != nil {
		return err
	}
	c.cur.Store(cfg)
	return nil
}

// paths are the files to watch.
func (c *certificates) paths() []string {
	p := []string{c.files.CertFile, c.files.KeyFile}
	if c.files.ClientCAFile != "" {
		p = append(p, c.files.ClientCAFile)
	}
	return p
}

// credentials are gRPC transport credentials that pick the current configuration
// for each handshake.
func (c *certificates) credentials() credentials.TransportCredentials {
	return credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return c.cur.Load(), nil
		},
	})
}
