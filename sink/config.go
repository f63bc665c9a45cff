package sink

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/cdcrelay/cdcrelay/internal/config"
)

// SaramaConfig builds the client configuration for cfg. transactional sets up
// an exactly-once producer: idempotent, acks=all, one request in flight.
func SaramaConfig(cfg *config.Kafka, transactional bool) (*sarama.Config, error) {
	sc := sarama.NewConfig()
	v, err := sarama.ParseKafkaVersion(cfg.Version)
	if err != nil {
		return nil, fmt.Errorf("kafka.version %q: %w", cfg.Version, err)
	}
	sc.Version = v
	sc.ClientID = cfg.ClientID
	sc.Net.ReadTimeout = cfg.RequestTimeout.Duration
	sc.Net.WriteTimeout = cfg.RequestTimeout.Duration
	sc.Net.DialTimeout = 10 * time.Second
	sc.Metadata.Retry.Max = 3
	sc.Metadata.Retry.Backoff = 250 * time.Millisecond
	sc.Producer.Partitioner = sarama.NewMurmur2Partitioner
	sc.Producer.Return.Errors = true
	sc.Producer.Return.Successes = false
	// sarama also sizes its record batches by this, so it must not exceed the
	// broker's message.max.bytes (1 MB by default); larger events are
	// refused per topic before sending (see Txn.Send).
	sc.Producer.MaxMessageBytes = 1000000
	sc.Consumer.IsolationLevel = sarama.ReadCommitted
	if transactional {
		sc.Producer.Idempotent = true
		sc.Producer.RequiredAcks = sarama.WaitForAll
		sc.Net.MaxOpenRequests = 1
		// Below the read timeout, so a produce that the broker could not
		// finish comes back as an error rather than as a dropped connection.
		sc.Producer.Timeout = cfg.RequestTimeout.Duration * 2 / 3
		// Few retries inside sarama: a broker that stays away must fail the
		// session within a few request timeouts (crash-only; the next
		// session resumes from the checkpoint), not after minutes of retries.
		sc.Producer.Retry.Max = 2
		sc.Producer.Retry.Backoff = 200 * time.Millisecond
		sc.Producer.Transaction.ID = cfg.TransactionalID
		sc.Producer.Transaction.Timeout = cfg.TransactionTimeout.Duration
		// EndTxn is not retried inside sarama: a retried EndTxn whose first
		// attempt is only delayed can finish a later transaction of the same
		// epoch (KAFKA-17754). The relay re-creates the producer instead.
		sc.Producer.Transaction.Retry.Max = 0
		// With Max = 0 sarama still sleeps Backoff before it returns a
		// retriable error (e.g. CONCURRENT_TRANSACTIONS from InitProducerId
		// while the coordinator writes the previous commit's markers). With
		// a fresh epoch per transaction that sleep came after every commit:
		// 100ms of idle per Kafka transaction (make bench, outbox-small:
		// commits 140ms apart, relay CPU 20% busy). The Writer retries the
		// producer's creation itself, so return at once.
		sc.Producer.Transaction.Retry.Backoff = time.Millisecond
		sc.Producer.Flush.Bytes = 1 << 20
		sc.Producer.Flush.Frequency = 5 * time.Millisecond
		sc.Producer.Flush.MaxMessages = 0
	}
	if cfg.TLS.Enable {
		tc, err := tlsConfig(&cfg.TLS)
		if err != nil {
			return nil, err
		}
		sc.Net.TLS.Enable = true
		sc.Net.TLS.Config = tc
	}
	if cfg.SASL.Mechanism != "" {
		if err := saslConfig(sc, &cfg.SASL); err != nil {
			return nil, err
		}
	}
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("kafka client configuration: %w", err)
	}
	return sc, nil
}

func tlsConfig(t *config.TLS) (*tls.Config, error) {
	tc := &tls.Config{InsecureSkipVerify: t.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("kafka.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kafka.tls.ca_file %s: no PEM certificate found", t.CAFile)
		}
		tc.RootCAs = pool
	}
	if t.CertFile != "" || t.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("kafka.tls.cert_file/key_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

func saslConfig(sc *sarama.Config, s *config.SASL) error {
	password := s.Password
	if s.PasswordFile != "" {
		b, err := os.ReadFile(s.PasswordFile)
		if err != nil {
			return fmt.Errorf("kafka.sasl.password_file: %w", err)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	sc.Net.SASL.Enable = true
	sc.Net.SASL.User = s.Username
	sc.Net.SASL.Password = password
	switch strings.ToUpper(s.Mechanism) {
	case "PLAIN":
		sc.Net.SASL.Mechanism = sarama.SASLTypePlaintext
	case "SCRAM-SHA-256":
		sc.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA256
		sc.Net.SASL.SCRAMClientGeneratorFunc = scramSHA256
	case "SCRAM-SHA-512":
		sc.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA512
		sc.Net.SASL.SCRAMClientGeneratorFunc = scramSHA512
	default:
		return fmt.Errorf("kafka.sasl.mechanism %q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", s.Mechanism)
	}
	return nil
}
