package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Certs is a throw-away PKI for TLS tests, made with crypto/x509 (no
// openssl): a CA, a server certificate for 127.0.0.1 and localhost, and a
// client certificate. Every file is PEM; keys are unencrypted PKCS#8, which
// both Postgres and Kafka's PEM key stores read.
type Certs struct {
	Dir string
	// CAFile is the CA certificate: the trust anchor of clients and servers.
	CAFile string
	// ServerCertFile and ServerKeyFile: CN and SANs 127.0.0.1, ::1, localhost.
	ServerCertFile, ServerKeyFile string
	// ServerPEMFile holds the server key followed by its certificate: a
	// Kafka PEM key store (ssl.keystore.type=PEM).
	ServerPEMFile string
	// ClientCertFile and ClientKeyFile: CN ClientName, for mutual TLS.
	ClientCertFile, ClientKeyFile string
	ClientName                    string

	ServerCertPEM, ServerKeyPEM, CAPEM []byte
}

// NewCerts writes a new CA and a server and client certificate into dir. The
// client certificate's common name is clientName (Postgres's cert
// authentication maps it to the role of that name).
func NewCerts(dir, clientName string) (*Certs, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	c := &Certs{
		Dir: dir, ClientName: clientName,
		CAFile:         filepath.Join(dir, "ca.crt"),
		ServerCertFile: filepath.Join(dir, "server.crt"),
		ServerKeyFile:  filepath.Join(dir, "server.key"),
		ServerPEMFile:  filepath.Join(dir, "server.pem"),
		ClientCertFile: filepath.Join(dir, "client.crt"),
		ClientKeyFile:  filepath.Join(dir, "client.key"),
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "cdcrelay test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	c.CAPEM = pemBlock("CERTIFICATE", caDER)

	issue := func(cn string, usage x509.ExtKeyUsage, server bool) (certPEM, keyPEM []byte, err error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		if server {
			tmpl.DNSNames = []string{"localhost"}
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return nil, nil, err
		}
		pk, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, nil, err
		}
		return pemBlock("CERTIFICATE", der), pemBlock("PRIVATE KEY", pk), nil
	}
	if c.ServerCertPEM, c.ServerKeyPEM, err = issue("127.0.0.1", x509.ExtKeyUsageServerAuth, true); err != nil {
		return nil, err
	}
	clientCert, clientKey, err := issue(clientName, x509.ExtKeyUsageClientAuth, false)
	if err != nil {
		return nil, err
	}
	for path, content := range map[string][]byte{
		c.CAFile:         c.CAPEM,
		c.ServerCertFile: c.ServerCertPEM,
		c.ServerKeyFile:  c.ServerKeyPEM,
		c.ServerPEMFile:  append(append([]byte{}, c.ServerKeyPEM...), c.ServerCertPEM...),
		c.ClientCertFile: clientCert,
		c.ClientKeyFile:  clientKey,
	} {
		// Keys 0600: libpq refuses a client key readable by others.
		if err := os.WriteFile(path, content, 0o600); err != nil {
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
	}
	// The CA and the certificates are public; the key store is read by the
	// broker, which runs as the caller.
	for _, p := range []string{c.CAFile, c.ServerCertFile, c.ClientCertFile} {
		if err := os.Chmod(p, 0o644); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
