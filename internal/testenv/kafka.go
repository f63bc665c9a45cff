package testenv

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/IBM/sarama"
)

// KafkaVersion is the broker version that testdata/kafka/pom.xml pins (a test
// checks that they agree); it names the default jar cache directory.
const KafkaVersion = "4.1.1"

// KafkaOptions configures [StartKafka]. The zero value gives a single-node
// broker for exactly-once tests.
type KafkaOptions struct {
	// ParentDir is where the broker's own directory is created (default
	// [TempRoot]). Close removes the broker's directory, not ParentDir.
	ParentDir string
	// JarDir holds the broker's jars (default [KafkaJarDir]).
	JarDir string

	// Ports on 127.0.0.1; 0 picks free ones (and picks again if a bind fails
	// at start). The broker has three listeners: INTERNAL (inter-broker, and a
	// direct way in for tests that must bypass a proxy), EXTERNAL (for the
	// clients under test) and CONTROLLER (KRaft).
	InternalPort   int
	ExternalPort   int
	ControllerPort int
	// AdvertisedPort is the port that metadata responses name for the
	// EXTERNAL listener (default ExternalPort). Set it to the port of a
	// [Proxy] whose target is the external listener, so that clients, which
	// connect to the addresses they learn from metadata, stay behind the proxy.
	AdvertisedPort int
	// Proxy makes StartKafka do exactly that: a Proxy in front of the EXTERNAL
	// listener, advertised as the broker's address. See [Kafka.Proxy].
	Proxy bool

	// AutoCreateTopics sets auto.create.topics.enable (default false).
	AutoCreateTopics bool
	// HeapMB is the JVM's maximum heap (default 512).
	HeapMB int
	// ServerProperties are further broker settings; they override the ones
	// StartKafka writes (see server.properties in [Kafka.Dir]).
	ServerProperties map[string]string
	// Detach starts the broker in its own session so that it outlives the
	// calling process (devenv up). Otherwise it is killed when the caller dies.
	Detach bool
	// ReadyTimeout bounds each wait for the broker to be ready (default 60s).
	ReadyTimeout time.Duration
}

// Kafka is a single-node KRaft broker (process.roles=broker,controller) in a JVM
// of its own. The methods are safe for concurrent use.
type Kafka struct {
	opts       KafkaOptions
	dir        string
	dataDir    string
	configFile string
	jarDir     string

	internalPort, externalPort, controllerPort, advertisedPort int
	proxy                                                      *Proxy

	mu     sync.Mutex
	cmd    *exec.Cmd     // nil when not running
	exited chan struct{} // closed when cmd has exited
	waited error         // cmd.Wait's result, once exited is closed
}

// StartKafka formats a new broker directory and starts the broker, returning
// once it answers metadata requests, has a controller, and a transactional
// producer can be initialised on it (which also creates the transaction-state
// and consumer-offsets topics, so that the first test does not pay for that).
// Call Close to stop it and remove the directory.
func StartKafka(ctx context.Context, opts KafkaOptions) (*Kafka, error) {
	jarDir := opts.JarDir
	if jarDir == "" {
		var err error
		if jarDir, err = KafkaJarDir(); err != nil {
			return nil, err
		}
	}
	if _, err := javaPath(); err != nil {
		return nil, err
	}
	dir, _, err := newServerDir(opts.ParentDir, "kafka-", "")
	if err != nil {
		return nil, err
	}
	k := &Kafka{
		opts: opts, dir: dir, jarDir: jarDir,
		dataDir:    filepath.Join(dir, "data"),
		configFile: filepath.Join(dir, "server.properties"),
	}
	autoPorts := opts.InternalPort == 0 || opts.ExternalPort == 0 || opts.ControllerPort == 0
	for attempt := 1; ; attempt++ {
		err := k.setup(ctx)
		if err == nil {
			err = k.Start(ctx)
		}
		if err == nil {
			return k, nil
		}
		k.Close()
		bindFailed := strings.Contains(tailFile(filepath.Join(k.dir, "logs", "server.log"), 1<<16), "Address already in use") ||
			strings.Contains(tailFile(filepath.Join(k.dir, "logs", "stdout.log"), 1<<16), "Address already in use")
		if !autoPorts || !bindFailed || attempt == 3 || ctx.Err() != nil {
			return nil, err
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
	}
}

// setup picks ports, writes the configuration and formats the log directory.
func (k *Kafka) setup(ctx context.Context) error {
	ports, err := FreePorts(3)
	if err != nil {
		return err
	}
	k.internalPort = cmp0(k.opts.InternalPort, ports[0])
	k.externalPort = cmp0(k.opts.ExternalPort, ports[1])
	k.controllerPort = cmp0(k.opts.ControllerPort, ports[2])
	k.advertisedPort = cmp0(k.opts.AdvertisedPort, k.externalPort)
	if k.opts.Proxy {
		k.proxy, err = NewProxy(net.JoinHostPort("127.0.0.1", strconv.Itoa(k.externalPort)))
		if err != nil {
			return err
		}
		k.advertisedPort = k.proxy.Port()
	}
	if err := os.MkdirAll(filepath.Join(k.dir, "logs"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(k.dir, "log4j2.properties"), []byte(k.log4j2Config()), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(k.configFile, []byte(k.serverProperties()), 0o644); err != nil {
		return err
	}
	clusterID, err := newClusterID()
	if err != nil {
		return err
	}
	cmd := k.java(ctx, "-Xmx256m", "kafka.tools.StorageTool", "format", "--standalone",
		"--cluster-id", clusterID, "--config", k.configFile)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("format kafka log dir %s: %w: %s", k.dataDir, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (k *Kafka) serverProperties() string {
	host := "127.0.0.1"
	p := map[string]string{
		"process.roles":                       "broker,controller",
		"node.id":                             "1",
		"controller.quorum.bootstrap.servers": fmt.Sprintf("%s:%d", host, k.controllerPort),
		"controller.listener.names":           "CONTROLLER",
		"inter.broker.listener.name":          "INTERNAL",
		"listeners": fmt.Sprintf("INTERNAL://%s:%d,EXTERNAL://%s:%d,CONTROLLER://%s:%d",
			host, k.internalPort, host, k.externalPort, host, k.controllerPort),
		"advertised.listeners": fmt.Sprintf("INTERNAL://%s:%d,EXTERNAL://%s:%d",
			host, k.internalPort, host, k.advertisedPort),
		"listener.security.protocol.map": "INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
		"log.dirs":                       k.dataDir,
		"num.partitions":                 "1",
		"default.replication.factor":     "1",
		"min.insync.replicas":            "1",
		"auto.create.topics.enable":      strconv.FormatBool(k.opts.AutoCreateTopics),
		// One broker: every internal topic has one replica. Few partitions
		// make their creation (and loading after a restart) quick.
		"offsets.topic.replication.factor":                 "1",
		"offsets.topic.num.partitions":                     "5",
		"transaction.state.log.replication.factor":         "1",
		"transaction.state.log.min.isr":                    "1",
		"transaction.state.log.num.partitions":             "5",
		"share.coordinator.state.topic.replication.factor": "1",
		"share.coordinator.state.topic.min.isr":            "1",
		"group.initial.rebalance.delay.ms":                 "0",
	}
	maps.Copy(p, k.opts.ServerProperties)
	var b strings.Builder
	b.WriteString("# written by cdcrelay's testenv\n")
	for _, key := range slices.Sorted(maps.Keys(p)) {
		fmt.Fprintf(&b, "%s=%s\n", key, p[key])
	}
	return b.String()
}

// log4j2Config sends the broker's log to logs/server.log, nothing to stdout.
func (k *Kafka) log4j2Config() string {
	return `# written by cdcrelay's testenv
status = warn
name = cdcrelay-testenv
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ` + filepath.Join(k.dir, "logs", "server.log") + `
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
`
}

// newClusterID returns a random Kafka Uuid in its base64 form.
func newClusterID() (string, error) {
	for {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		id := base64.RawURLEncoding.EncodeToString(b[:])
		if id[0] != '-' { // as Kafka's Uuid.randomUuid: not mistaken for a flag
			return id, nil
		}
	}
}

func javaPath() (string, error) {
	if home := os.Getenv("JAVA_HOME"); home != "" {
		if p := filepath.Join(home, "bin", "java"); fileExists(p) {
			return p, nil
		}
	}
	p, err := exec.LookPath("java")
	if err != nil {
		return "", fmt.Errorf("java not found (set JAVA_HOME or put java on PATH): %w", err)
	}
	return p, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// java builds a JVM command with the broker's class path.
func (k *Kafka) java(ctx context.Context, args ...string) *exec.Cmd {
	java, _ := javaPath()
	base := []string{
		"-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
		"-Dlog4j2.configurationFile=" + filepath.Join(k.dir, "log4j2.properties"),
		"-cp", filepath.Join(k.jarDir, "*"),
	}
	// Options go before the main class, program arguments after it.
	i := slices.IndexFunc(args, func(a string) bool { return !strings.HasPrefix(a, "-") })
	full := slices.Concat(args[:i:i], base, args[i:])
	cmd := exec.CommandContext(ctx, java, full...)
	cmd.Dir = k.dir
	return cmd
}

// Start starts the broker if it is not running and waits until it is ready.
func (k *Kafka) Start(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.running() {
		return nil
	}
	out, err := os.OpenFile(filepath.Join(k.dir, "logs", "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	heap := fmt.Sprintf("-Xmx%dm", cmp0(k.opts.HeapMB, 512))
	// Not CommandContext: the broker must outlive ctx.
	cmd := k.java(context.Background(), heap, "-Xms64m", "kafka.Kafka", k.configFile)
	cmd.Stdout, cmd.Stderr = out, out
	if k.opts.Detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		// Dies with the test binary, even one killed before its cleanups ran.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start kafka: %w", err)
	}
	k.cmd = cmd
	k.exited = make(chan struct{})
	go func(exited chan struct{}) {
		err := cmd.Wait()
		k.waited = err
		close(exited)
	}(k.exited)
	if err := os.WriteFile(filepath.Join(k.dir, kafkaPIDFile), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		return err
	}
	return k.waitReady(ctx)
}

// running reports whether the broker process is alive. Callers hold k.mu.
func (k *Kafka) running() bool {
	if k.cmd == nil {
		return false
	}
	select {
	case <-k.exited:
		return false
	default:
		return true
	}
}

// Running reports whether the broker process is alive.
func (k *Kafka) Running() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.running()
}

// WaitReady waits until the broker answers as described at [StartKafka].
func (k *Kafka) WaitReady(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.waitReady(ctx)
}

func (k *Kafka) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, cmpDuration(k.opts.ReadyTimeout, 60*time.Second))
	defer cancel()
	var err error
	for {
		if !k.running() {
			return fmt.Errorf("kafka exited during start (%v)\n--- %s (tail) ---\n%s\n--- stdout (tail) ---\n%s",
				k.waited, k.LogFile(), tailFile(k.LogFile(), 4096), tailFile(filepath.Join(k.dir, "logs", "stdout.log"), 2048))
		}
		if err = checkKafkaReady(k.InternalBrokers(), k.ExternalAddr()); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kafka in %s not ready: %w\n--- %s (tail) ---\n%s", k.dir, err, k.LogFile(), tailFile(k.LogFile(), 4096))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func cmpDuration(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

// readyTxnID is the transactional id used to check that the transaction
// coordinator works; its producer commits nothing.
const readyTxnID = "cdcrelay-testenv-ready"

// checkKafkaReady makes one attempt at the readiness checks of [StartKafka].
func checkKafkaReady(brokers []string, externalAddr string) error {
	if externalAddr != "" {
		c, err := net.DialTimeout("tcp", externalAddr, 2*time.Second)
		if err != nil {
			return fmt.Errorf("external listener: %w", err)
		}
		c.Close()
	}
	cfg := saramaConfig()
	cfg.Net.DialTimeout = 2 * time.Second
	cfg.Net.ReadTimeout = 10 * time.Second
	cfg.Metadata.Retry.Max = 0
	client, err := sarama.NewClient(brokers, cfg)
	if err != nil {
		return err
	}
	defer client.Close()
	if _, err := client.Controller(); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if _, err := client.Coordinator(readyTxnID); err != nil {
		return fmt.Errorf("group coordinator: %w", err)
	}
	pcfg := saramaConfig()
	pcfg.Net.DialTimeout = 2 * time.Second
	pcfg.Producer.Idempotent = true
	pcfg.Producer.RequiredAcks = sarama.WaitForAll
	pcfg.Net.MaxOpenRequests = 1
	pcfg.Producer.Transaction.ID = readyTxnID
	pcfg.Producer.Transaction.Retry.Max = 2
	producer, err := sarama.NewAsyncProducer(brokers, pcfg) // runs InitProducerId
	if err != nil {
		return fmt.Errorf("transactional producer: %w", err)
	}
	return producer.Close()
}

// saramaConfig is the base client configuration of the helpers: Kafka 3.6
// protocol versions, which Kafka 4.x accepts and sarama's transactions use.
func saramaConfig() *sarama.Config {
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_6_0_0
	cfg.ClientID = "cdcrelay-testenv"
	return cfg
}

// Stop stops the broker with SIGTERM (a controlled shutdown), escalating to
// SIGKILL after 30 seconds. Its data is kept for Start.
func (k *Kafka) Stop(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.stop(ctx, syscall.SIGTERM)
}

// Kill kills the broker with SIGKILL, as in a crash. Its data is kept for Start.
func (k *Kafka) Kill() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.stop(context.Background(), syscall.SIGKILL)
}

func (k *Kafka) stop(ctx context.Context, sig syscall.Signal) error {
	if !k.running() {
		return nil
	}
	_ = k.cmd.Process.Signal(sig)
	timer := time.NewTimer(stopGracePeriod)
	defer timer.Stop()
	select {
	case <-k.exited:
		return nil
	case <-ctx.Done():
	case <-timer.C:
	}
	_ = k.cmd.Process.Kill()
	<-k.exited
	return ctx.Err()
}

// Restart stops the broker (controlled shutdown) and starts it again on the same
// ports with the same data.
func (k *Kafka) Restart(ctx context.Context) error {
	if err := k.Stop(ctx); err != nil {
		return err
	}
	return k.Start(ctx)
}

// Close kills the broker, closes its proxy and removes its directory.
func (k *Kafka) Close() error {
	err := k.Kill()
	if k.proxy != nil {
		k.proxy.Close()
	}
	return errors.Join(err, os.RemoveAll(k.dir))
}

// Brokers is the bootstrap list for the clients under test: the advertised
// address of the EXTERNAL listener (the proxy's, when there is one).
func (k *Kafka) Brokers() []string {
	return []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(k.advertisedPort))}
}

// InternalBrokers is a bootstrap list that reaches the broker directly on the
// INTERNAL listener, bypassing any proxy: clients that bootstrap here learn
// INTERNAL addresses from metadata. For a test's own checks (reading what the
// relay wrote while the proxy is stalled, say).
func (k *Kafka) InternalBrokers() []string {
	return []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(k.internalPort))}
}

// ExternalAddr is the real address of the EXTERNAL listener: the target of a
// proxy in front of it.
func (k *Kafka) ExternalAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(k.externalPort))
}

// Proxy is the proxy in front of the EXTERNAL listener when [KafkaOptions.Proxy]
// was set, else nil.
func (k *Kafka) Proxy() *Proxy { return k.proxy }

// Dir is the broker's own directory: server.properties, log4j2.properties,
// data/, logs/.
func (k *Kafka) Dir() string { return k.dir }

// LogFile is the broker's log.
func (k *Kafka) LogFile() string { return filepath.Join(k.dir, "logs", "server.log") }

// JarDir is the directory of the jars the broker runs from.
func (k *Kafka) JarDir() string { return k.jarDir }

// PID is the broker's process id, 0 when it is not running.
func (k *Kafka) PID() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.running() {
		return 0
	}
	return k.cmd.Process.Pid
}

// DefaultKafkaJarDir is where `make kafka-jars` puts the broker jars:
// ${XDG_CACHE_HOME:-$HOME/.cache}/cdcrelay/kafka-<KafkaVersion>.
func DefaultKafkaJarDir() string {
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		cache = filepath.Join(os.Getenv("HOME"), ".cache")
	}
	return filepath.Join(cache, "cdcrelay", "kafka-"+KafkaVersion)
}

// KafkaJarDir returns the broker jar directory, $CDCRELAY_KAFKA_JARS or
// [DefaultKafkaJarDir], after checking that it holds the broker.
func KafkaJarDir() (string, error) {
	dir := os.Getenv(EnvKafkaJars)
	if dir == "" {
		dir = DefaultKafkaJarDir()
	}
	jars, _ := filepath.Glob(filepath.Join(dir, "kafka_2.13-*.jar"))
	if len(jars) == 0 {
		return "", fmt.Errorf("no Kafka broker jars in %s: run `make kafka-jars` or set %s", dir, EnvKafkaJars)
	}
	return filepath.Abs(dir)
}

// CreateTopic creates a topic with replication factor 1 and waits until every
// partition has a leader in the metadata of brokers. configs are topic configs
// such as {"cleanup.policy": "compact"}.
func CreateTopic(ctx context.Context, brokers []string, name string, partitions int32, configs map[string]string) error {
	client, err := sarama.NewClient(brokers, saramaConfig())
	if err != nil {
		return err
	}
	defer client.Close()
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return err
	}
	entries := make(map[string]*string, len(configs))
	for k, v := range configs {
		entries[k] = &v
	}
	err = admin.CreateTopic(name, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: 1, ConfigEntries: entries}, false)
	if err != nil {
		return fmt.Errorf("create topic %s: %w", name, err)
	}
	for {
		err = client.RefreshMetadata(name)
		if err == nil {
			var ps []int32
			if ps, err = client.Partitions(name); err == nil && int32(len(ps)) == partitions {
				for _, p := range ps {
					if _, err = client.Leader(name, p); err != nil {
						break
					}
				}
				if err == nil {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("topic %s has no leaders: %w", name, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
