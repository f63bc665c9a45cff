package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// StreamConfig says which slot to stream from and where to start.
type StreamConfig struct {
	// DSN is the ordinary connection string; the stream adds replication=database.
	DSN         string
	Slot        string
	Publication string
	// Start is the position to resume from: every transaction whose commit
	// record starts at or after it is sent. Postgres raises a position below
	// the slot's confirmed_flush_lsn to it.
	Start LSN
	// StatusInterval is how often the durable position is reported even when
	// the server asks for nothing. Keep it well below wal_sender_timeout.
	StatusInterval time.Duration
	// Expect, when set, is the server the caller checked the slot and the
	// checkpoint against ([IdentifyServer]). With a multi-host DSN another
	// connection may reach another server (a failover in between); Open
	// then fails with an [*ServerChangedError] instead of streaming.
	Expect *ServerIdentity
}

// ServerChangedError: the replication connection reached another server
// than the one [StreamConfig.Expect] names. Retrying is the answer.
type ServerChangedError struct{ Want, Got *ServerIdentity }

func (e *ServerChangedError) Error() string {
	return fmt.Sprintf("the replication connection reached %s (system %s, timeline %d, in recovery %v), not the checked primary %s (system %s, timeline %d): a failover under way?",
		e.Got.Addr, e.Got.SystemID, e.Got.Timeline, e.Got.InRecovery, e.Want.Addr, e.Want.SystemID, e.Want.Timeline)
}

// Stream is one logical replication session on a slot. It is not safe for
// concurrent use, except [Stream.Ack], which may be called from any goroutine.
type Stream struct {
	cfg   StreamConfig
	conn  *pgconn.PgConn
	types *typeCache

	relations map[uint32]*Relation
	durable   atomic.Uint64 // highest position acknowledged via Ack

	nextStatus time.Time
	sentAck    LSN

	// the transaction being received
	inTx  bool
	begin Begin
	index int

	pending []Message // changes of one Truncate message, handed out one by one
	walEnd  LSN       // latest server WAL position seen

	// the read deadline of the socket, and the context that may cut it short (receive)
	deadline  time.Time
	watchCtx  context.Context
	stopWatch func() bool
}

// ApplicationName names the relay's replication sessions in pg_stat_activity.
const ApplicationName = "cdcrelay"

// MessagePrefix starts the prefix of every logical message the relay reads.
const MessagePrefix = "cdcrelay"

// ErrSlotInUse is returned by [Open] when another session streams from the slot.
var ErrSlotInUse = errors.New("replication slot is in use by another process")

// Open connects and starts streaming from cfg.Start. The durable position
// starts at cfg.Start: nothing before it is ever re-requested.
func Open(ctx context.Context, cfg StreamConfig) (*Stream, error) {
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = 10 * time.Second
	}
	pc, err := pgconn.ParseConfig(cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("postgres.dsn: %w", err)
	}
	pc.RuntimeParams["replication"] = "database"
	// Values' text form depends on session settings (TimeZone, DateStyle,
	// float digits, bytea output, money locale); pin them, because the value
	// encoding in package mapping depends on these forms.
	for k, v := range textFormatParams {
		pc.RuntimeParams[k] = v
	}
	pc.RuntimeParams["application_name"] = ApplicationName
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("replication connection: %w", err)
	}
	s := &Stream{
		cfg:       cfg,
		conn:      conn,
		types:     newTypeCache(cfg.DSN),
		relations: map[uint32]*Relation{},
		sentAck:   cfg.Start,
	}
	s.durable.Store(uint64(cfg.Start))
	if cfg.Expect != nil {
		id, err := identify(ctx, conn)
		if err != nil {
			conn.Close(context.Background())
			return nil, fmt.Errorf("replication connection: %w", err)
		}
		if id.SystemID != cfg.Expect.SystemID || id.Timeline != cfg.Expect.Timeline || id.InRecovery {
			conn.Close(context.Background())
			return nil, &ServerChangedError{Want: cfg.Expect, Got: id}
		}
	}
	err = pglogrepl.StartReplication(ctx, conn, cfg.Slot, cfg.Start, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", fmt.Sprintf("publication_names '%s'", cfg.Publication), "messages 'true'"},
	})
	if err != nil {
		conn.Close(context.Background())
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" {
			return nil, fmt.Errorf("slot %s: %w (%s)", cfg.Slot, ErrSlotInUse, pgErr.Message)
		}
		return nil, fmt.Errorf("start replication on slot %s at %s: %w", cfg.Slot, cfg.Start, err)
	}
	s.nextStatus = time.Now().Add(cfg.StatusInterval)
	return s, nil
}

// Ack records that everything before lsn is durable downstream. The position
// reaches the server with the next status update.
func (s *Stream) Ack(lsn LSN) {
	for {
		old := s.durable.Load()
		if uint64(lsn) <= old || s.durable.CompareAndSwap(old, uint64(lsn)) {
			return
		}
	}
}

// Acked is the highest position passed to Ack (or the start position).
func (s *Stream) Acked() LSN { return LSN(s.durable.Load()) }

// ServerWALEnd is the latest WAL end the server reported.
func (s *Stream) ServerWALEnd() LSN { return s.walEnd }

// SendStatus reports the durable position to the server now.
func (s *Stream) SendStatus(ctx context.Context) error {
	ack := s.Acked()
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: ack})
	if err != nil {
		return fmt.Errorf("send status update (lsn %s): %w", ack, err)
	}
	s.sentAck = ack
	s.nextStatus = time.Now().Add(s.cfg.StatusInterval)
	return nil
}

// StatusDue tells whether a status update should be sent now.
func (s *Stream) StatusDue() bool { return time.Now().After(s.nextStatus) }

// Next returns the next message. It answers keepalives and sends periodic
// status updates itself while it waits.
func (s *Stream) Next(ctx context.Context) (Message, error) {
	if len(s.pending) > 0 {
		m := s.pending[0]
		s.pending = s.pending[1:]
		return m, nil
	}
	for {
		if s.StatusDue() || s.Acked() > s.sentAck && !s.inTx {
			if err := s.SendStatus(ctx); err != nil {
				return nil, err
			}
		}
		raw, err := s.receive(ctx)
		if err != nil {
			if ctx.Err() == nil && pgconn.Timeout(err) {
				continue
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("replication stream on slot %s: %w", s.cfg.Slot, err)
		}
		switch m := raw.(type) {
		case *pgproto3.CopyData:
			msg, err := s.handleCopyData(ctx, m.Data)
			if err != nil {
				return nil, err
			}
			if msg != nil {
				return msg, nil
			}
		case *pgproto3.ErrorResponse:
			// A missing publication, a dropped slot and the like arrive here,
			// after START_REPLICATION has already succeeded.
			return nil, fmt.Errorf("replication stream on slot %s: %w", s.cfg.Slot, pgconn.ErrorResponseToPgError(m))
		case *pgproto3.CopyDone:
			return nil, fmt.Errorf("replication stream on slot %s: server ended the stream", s.cfg.Slot)
		default:
			return nil, fmt.Errorf("replication stream on slot %s: unexpected message %T", s.cfg.Slot, raw)
		}
	}
}

// receive reads one message, until ctx ends or the next status update is
// due. Both act through the socket's read deadline, set once per status
// interval, instead of through pgconn's per-call context watcher: a
// context.AfterFunc registered and stopped for every received message was 6%
// of the relay's CPU (make bench profile), and before that a context with a
// deadline per message another 5%. A read that times out leaves the
// connection usable (pgconn closes it on any other error), as before.
func (s *Stream) receive(ctx context.Context) (pgproto3.BackendMessage, error) {
	if s.watchCtx != ctx {
		if s.stopWatch != nil {
			s.stopWatch()
		}
		conn := s.conn.Conn()
		s.stopWatch = context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
		s.watchCtx = ctx
		s.deadline = time.Time{}
	}
	if !s.deadline.Equal(s.nextStatus) {
		if err := s.conn.Conn().SetReadDeadline(s.nextStatus); err != nil {
			return nil, fmt.Errorf("replication stream on slot %s: %w", s.cfg.Slot, err)
		}
		s.deadline = s.nextStatus
	}
	// Checked after setting the deadline: a cancellation from here on sets
	// its own (past) deadline after ours.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.conn.ReceiveMessage(context.Background())
}

func (s *Stream) handleCopyData(ctx context.Context, data []byte) (Message, error) {
	if len(data) == 0 {
		return nil, nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return nil, fmt.Errorf("keepalive: %w", err)
		}
		if pkm.ServerWALEnd > s.walEnd {
			s.walEnd = pkm.ServerWALEnd
		}
		if pkm.ReplyRequested {
			if err := s.SendStatus(ctx); err != nil {
				return nil, err
			}
		}
		if s.inTx {
			return nil, nil
		}
		return &Keepalive{WALEnd: pkm.ServerWALEnd}, nil
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return nil, fmt.Errorf("xlog data: %w", err)
		}
		if xld.ServerWALEnd > s.walEnd {
			s.walEnd = xld.ServerWALEnd
		}
		return s.decode(ctx, xld)
	}
	return nil, nil
}

func (s *Stream) decode(ctx context.Context, xld pglogrepl.XLogData) (Message, error) {
	if len(xld.WALData) > 0 {
		switch xld.WALData[0] {
		case 'I', 'U', 'D':
			// The hot path: row changes skip pglogrepl (see decodeRow).
			c, err := s.decodeRow(xld.WALData)
			if err != nil {
				return nil, err
			}
			return c, nil
		}
	}
	lm, err := pglogrepl.Parse(xld.WALData)
	if err != nil {
		return nil, fmt.Errorf("decode pgoutput message at %s: %w", xld.WALStart, err)
	}
	switch m := lm.(type) {
	case *pglogrepl.BeginMessage:
		s.inTx = true
		s.index = 0
		s.begin = Begin{CommitLSN: m.FinalLSN, CommitTime: m.CommitTime, XID: m.Xid}
		b := s.begin
		return &b, nil
	case *pglogrepl.CommitMessage:
		s.inTx = false
		return &Commit{CommitLSN: m.CommitLSN, EndLSN: m.TransactionEndLSN, CommitTime: m.CommitTime, Changes: s.index}, nil
	case *pglogrepl.RelationMessage:
		rel, err := s.relation(ctx, m)
		if err != nil {
			return nil, err
		}
		s.relations[rel.ID] = rel
		return nil, nil
	case *pglogrepl.InsertMessage:
		return s.change(OpInsert, m.RelationID, nil, m.Tuple, false)
	case *pglogrepl.UpdateMessage:
		return s.change(OpUpdate, m.RelationID, m.OldTuple, m.NewTuple, m.OldTupleType == pglogrepl.UpdateMessageTupleTypeKey)
	case *pglogrepl.DeleteMessage:
		return s.change(OpDelete, m.RelationID, m.OldTuple, nil, m.OldTupleType == pglogrepl.DeleteMessageTupleTypeKey)
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			c, err := s.change(OpTruncate, id, nil, nil, false)
			if err != nil {
				return nil, err
			}
			s.pending = append(s.pending, c)
		}
		if len(s.pending) == 0 {
			return nil, nil
		}
		first := s.pending[0]
		s.pending = s.pending[1:]
		return first, nil
	case *pglogrepl.LogicalDecodingMessage:
		if m.Transactional && strings.HasPrefix(m.Prefix, MessagePrefix) {
			// Content aliases the connection's read buffer, which the next
			// receive overwrites; the message outlives it in the read-ahead.
			return &LogicalMessage{Prefix: m.Prefix, Content: bytes.Clone(m.Content), LSN: m.LSN}, nil
		}
	}
	// Origin and Type messages, and other applications' logical messages,
	// carry nothing the relay maps.
	return nil, nil
}

// newChange starts a change of relation relID at the next position of the
// current transaction.
func (s *Stream) newChange(op Op, relID uint32) (*Change, error) {
	rel, ok := s.relations[relID]
	if !ok {
		return nil, fmt.Errorf("change of unknown relation %d at commit %s: no Relation message was received", relID, s.begin.CommitLSN)
	}
	c := &Change{
		Op:         op,
		Relation:   rel,
		Pos:        Pos{CommitLSN: s.begin.CommitLSN, Index: s.index},
		XID:        s.begin.XID,
		CommitTime: s.begin.CommitTime,
	}
	s.index++
	return c, nil
}

// keyOnlyOld says the old row holds only the replica identity's columns;
// pgoutput sends the others as NULL, which they are not.
func (s *Stream) change(op Op, relID uint32, oldTuple, newTuple *pglogrepl.TupleData, keyOnlyOld bool) (*Change, error) {
	c, err := s.newChange(op, relID)
	if err != nil {
		return nil, err
	}
	rel := c.Relation
	if newTuple != nil {
		if c.New, err = values(rel, newTuple); err != nil {
			return nil, err
		}
	}
	if oldTuple != nil {
		if c.Old, err = values(rel, oldTuple); err != nil {
			return nil, err
		}
		if keyOnlyOld {
			for i := range c.Old {
				if !rel.Columns[i].Key {
					c.Old[i] = Value{Kind: ValueAbsent}
				}
			}
		}
	}
	return c, nil
}

func values(rel *Relation, t *pglogrepl.TupleData) ([]Value, error) {
	if len(t.Columns) > len(rel.Columns) {
		return nil, fmt.Errorf("table %s: row has %d columns, relation has %d", rel.QualifiedName(), len(t.Columns), len(rel.Columns))
	}
	vs := make([]Value, len(rel.Columns))
	for i, col := range t.Columns {
		switch col.DataType {
		case pglogrepl.TupleDataTypeText:
			vs[i] = Value{Kind: ValueText, Text: col.Data}
		case pglogrepl.TupleDataTypeNull:
			vs[i] = Value{Kind: ValueNull}
		case pglogrepl.TupleDataTypeToast:
			vs[i] = Value{Kind: ValueUnchanged}
		default:
			return nil, fmt.Errorf("table %s column %s: unexpected tuple data type %q", rel.QualifiedName(), rel.Columns[i].Name, col.DataType)
		}
	}
	return vs, nil
}

func (s *Stream) relation(ctx context.Context, m *pglogrepl.RelationMessage) (*Relation, error) {
	rel := &Relation{ID: m.RelationID, Schema: m.Namespace, Table: m.RelationName, ReplicaIdentity: m.ReplicaIdentity}
	pk, err := s.types.primaryKey(ctx, m.RelationID)
	if err != nil {
		return nil, fmt.Errorf("table %s.%s: %w", m.Namespace, m.RelationName, err)
	}
	for _, c := range m.Columns {
		t, err := s.types.get(ctx, c.DataType)
		if err != nil {
			return nil, fmt.Errorf("table %s.%s column %s: %w", m.Namespace, m.RelationName, c.Name, err)
		}
		rel.Columns = append(rel.Columns, Column{Name: c.Name, Type: t, Key: c.Flags&1 != 0, PrimaryKey: pk[c.Name], TypeModifier: c.TypeModifier})
	}
	return rel, nil
}

// Close ends the session. The server keeps the slot at the last reported position.
func (s *Stream) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if s.Acked() > s.sentAck && !s.inTx {
		_ = s.SendStatus(ctx)
	}
	s.conn.Close(ctx)
	s.types.close()
	if s.stopWatch != nil {
		s.stopWatch()
	}
}

// typeCache resolves type OIDs through an ordinary connection, opened on first
// need (the replication connection cannot run queries while streaming).
type typeCache struct {
	dsn   string
	mu    sync.Mutex
	conn  *pgx.Conn
	types map[uint32]*Type
}

func newTypeCache(dsn string) *typeCache {
	return &typeCache{dsn: dsn, types: map[uint32]*Type{}}
}

func (tc *typeCache) get(ctx context.Context, oid uint32) (*Type, error) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.resolve(ctx, oid, 0)
}

// primaryKey lists the primary key columns of the table with OID rel (a
// relation message says only which columns form the replica identity).
func (tc *typeCache) primaryKey(ctx context.Context, rel uint32) (map[string]bool, error) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if err := tc.connect(ctx); err != nil {
		return nil, err
	}
	rows, err := tc.conn.Query(ctx, `
		SELECT a.attname FROM pg_index i
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
		WHERE i.indrelid = $1::int8::oid AND i.indisprimary`, int64(rel))
	if err != nil {
		return nil, fmt.Errorf("read primary key: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read primary key: %w", err)
	}
	pk := make(map[string]bool, len(names))
	for _, n := range names {
		pk[n] = true
	}
	return pk, nil
}

func (tc *typeCache) connect(ctx context.Context) error {
	if tc.conn != nil {
		return nil
	}
	c, err := pgx.Connect(ctx, tc.dsn)
	if err != nil {
		return fmt.Errorf("catalog connection: %w", err)
	}
	tc.conn = c
	return nil
}

func (tc *typeCache) resolve(ctx context.Context, oid uint32, depth int) (*Type, error) {
	if t, ok := tc.types[oid]; ok {
		return t, nil
	}
	if depth > 8 {
		return nil, fmt.Errorf("type %d: nesting too deep", oid)
	}
	if err := tc.connect(ctx); err != nil {
		return nil, err
	}
	var (
		name           string
		kind, category string
		elem, base     int64
	)
	err := tc.conn.QueryRow(ctx,
		`SELECT typname, typtype::text, typcategory::text, typelem::int8, typbasetype::int8 FROM pg_type WHERE oid = $1`,
		int64(oid)).Scan(&name, &kind, &category, &elem, &base)
	if err != nil {
		return nil, fmt.Errorf("resolve type %d: %w", oid, err)
	}
	t := &Type{OID: oid, Name: name, Kind: kind[0]}
	if category == "A" && elem != 0 {
		if t.Elem, err = tc.resolve(ctx, uint32(elem), depth+1); err != nil {
			return nil, err
		}
	}
	if kind == "d" && base != 0 {
		if t.Base, err = tc.resolve(ctx, uint32(base), depth+1); err != nil {
			return nil, err
		}
	}
	tc.types[oid] = t
	return t, nil
}

func (tc *typeCache) close() {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.conn != nil {
		_ = tc.conn.Close(context.Background())
		tc.conn = nil
	}
}
