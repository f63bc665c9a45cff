package testenv

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"

	"github.com/IBM/sarama"
)

// SASLSSLKafkaOptions returns broker options whose EXTERNAL listener (the
// one [Kafka.Brokers] names) is SASL_SSL: TLS with certs' server certificate,
// client certificates required (mutual TLS) when mutualTLS, and SASL PLAIN,
// SCRAM-SHA-256 and SCRAM-SHA-512. plainUsers are the PLAIN users and their
// passwords; SCRAM users are added after the start with [Kafka.AddSCRAMUser].
// The INTERNAL listener stays PLAINTEXT, for the test's own clients (and
// testenv's readiness checks).
func SASLSSLKafkaOptions(certs *Certs, mutualTLS bool, plainUsers map[string]string) KafkaOptions {
	var jaas strings.Builder
	jaas.WriteString("org.apache.kafka.common.security.plain.PlainLoginModule required")
	for user, pw := range plainUsers {
		fmt.Fprintf(&jaas, " user_%s=%q", user, pw)
	}
	jaas.WriteString(";")
	clientAuth := "none"
	if mutualTLS {
		clientAuth = "required"
	}
	const l = "listener.name.external."
	return KafkaOptions{ServerProperties: map[string]string{
		"listener.security.protocol.map":            "INTERNAL:PLAINTEXT,EXTERNAL:SASL_SSL,CONTROLLER:PLAINTEXT",
		l + "sasl.enabled.mechanisms":               "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
		l + "plain.sasl.jaas.config":                jaas.String(),
		l + "scram-sha-256.sasl.jaas.config":        "org.apache.kafka.common.security.scram.ScramLoginModule required;",
		l + "scram-sha-512.sasl.jaas.config":        "org.apache.kafka.common.security.scram.ScramLoginModule required;",
		l + "ssl.keystore.type":                     "PEM",
		l + "ssl.keystore.location":                 certs.ServerPEMFile,
		l + "ssl.truststore.type":                   "PEM",
		l + "ssl.truststore.location":               certs.CAFile,
		l + "ssl.client.auth":                       clientAuth,
		l + "ssl.endpoint.identification.algorithm": "",
		l + "ssl.enabled.protocols":                 "TLSv1.2,TLSv1.3",
	}}
}

// AddSCRAMUser creates or replaces a SCRAM credential (mechanism
// "SCRAM-SHA-256" or "SCRAM-SHA-512") through the INTERNAL listener.
func (k *Kafka) AddSCRAMUser(ctx context.Context, mechanism, user, password string) error {
	mech := sarama.SCRAM_MECHANISM_SHA_256
	if mechanism == "SCRAM-SHA-512" {
		mech = sarama.SCRAM_MECHANISM_SHA_512
	}
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return err
	}
	admin, err := sarama.NewClusterAdmin(k.InternalBrokers(), saramaConfig())
	if err != nil {
		return err
	}
	defer admin.Close()
	res, err := admin.UpsertUserScramCredentials([]sarama.AlterUserScramCredentialsUpsert{
		{Name: user, Mechanism: mech, Iterations: 8192, Salt: salt, Password: []byte(password)},
	})
	if err != nil {
		return fmt.Errorf("add %s user %s: %w", mechanism, user, err)
	}
	for _, r := range res {
		if r.ErrorCode != sarama.ErrNoError {
			msg := ""
			if r.ErrorMessage != nil {
				msg = *r.ErrorMessage
			}
			return fmt.Errorf("add %s user %s: %v %s", mechanism, user, r.ErrorCode, msg)
		}
	}
	return nil
}

// TLSOnlyHBA is a pg_hba.conf for [Postgres.EnableTLS]: the superuser
// "postgres" keeps trust on loopback (testenv's own connections), every
// other role must come over TLS and authenticate with a SCRAM password, and
// plain TCP is refused for them.
const TLSOnlyHBA = `# written by cdcrelay's testenv: TLS required except for the superuser
host       all          postgres  127.0.0.1/32  trust
host       replication  postgres  127.0.0.1/32  trust
hostssl    all          all       127.0.0.1/32  scram-sha-256
hostssl    replication  all       127.0.0.1/32  scram-sha-256
hostnossl  all          all       127.0.0.1/32  reject
hostnossl  replication  all       127.0.0.1/32  reject
`

// EnableTLS installs certs' server certificate and CA in the data directory,
// turns ssl on, replaces pg_hba.conf with hba ([TLSOnlyHBA] when empty), and
// restarts the server.
func (p *Postgres) EnableTLS(ctx context.Context, certs *Certs, hba string) error {
	if hba == "" {
		hba = TLSOnlyHBA
	}
	for name, content := range map[string][]byte{
		"server.crt":  certs.ServerCertPEM,
		"server.key":  certs.ServerKeyPEM,
		"root.crt":    certs.CAPEM,
		"pg_hba.conf": []byte(hba),
	} {
		if err := p.writeFile(name, string(content)); err != nil {
			return err
		}
	}
	return p.SetSettings(ctx, map[string]string{
		"ssl":                      "on",
		"ssl_cert_file":            "'server.crt'",
		"ssl_key_file":             "'server.key'",
		"ssl_ca_file":              "'root.crt'",
		"password_encryption":      "'scram-sha-256'",
		"ssl_min_protocol_version": "'TLSv1.2'",
	})
}
