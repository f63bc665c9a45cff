package replication

import (
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// LSN is a WAL position. Its text form is Postgres's ("16/B374D848").
type LSN = pglogrepl.LSN

// Message is one item of the decoded stream, in WAL order: [*Begin], [*Change],
// [*LogicalMessage], [*Commit] or [*Keepalive].
type Message interface{ isMessage() }

// Begin opens a transaction. Postgres sends a transaction only once it has
// committed, so its commit position is already known here.
type Begin struct {
	CommitLSN  LSN // start of the commit record: identifies the transaction
	CommitTime time.Time
	XID        uint32
}

// Commit closes the transaction opened by the last [Begin].
type Commit struct {
	CommitLSN LSN
	// EndLSN is the end of the commit record. Confirming it to the slot makes a
	// restart skip this transaction; confirming CommitLSN would re-send it.
	EndLSN     LSN
	CommitTime time.Time
	// Changes is how many [Change] messages the transaction carried.
	Changes int
}

// LogicalMessage is a transactional pg_logical_emit_message() whose prefix
// starts with "cdcrelay": backfill requests and watermarks travel this way,
// so they reach the relay in commit order with the changes around them.
type LogicalMessage struct {
	Prefix  string
	Content []byte
	LSN     LSN
}

// Keepalive reports the server's position while no transaction is being sent:
// every transaction that commits before WALEnd has already been delivered.
type Keepalive struct {
	WALEnd LSN
}

// Op is the kind of row change.
type Op byte

const (
	OpInsert   Op = 'c' // "create", as Debezium names it
	OpUpdate   Op = 'u'
	OpDelete   Op = 'd'
	OpTruncate Op = 't'
	OpRead     Op = 'r' // a row read by a backfill, not by the stream
)

func (o Op) String() string {
	switch o {
	case OpInsert:
		return "insert"
	case OpUpdate:
		return "update"
	case OpDelete:
		return "delete"
	case OpTruncate:
		return "truncate"
	case OpRead:
		return "read"
	}
	return fmt.Sprintf("op(%c)", byte(o))
}

// Pos is a change's place in the stream. Postgres re-sends a whole transaction,
// in the same order, after a restart, so (CommitLSN, Index) names a change
// across restarts.
type Pos struct {
	CommitLSN LSN
	Index     int // 0-based count of changes before this one in its transaction
}

// Change is one row change of a published table.
type Change struct {
	Op       Op
	Relation *Relation
	// New is the row after the change (insert, update, backfill read). Old is the
	// row before it (delete; update when the replica identity sent it): with
	// REPLICA IDENTITY DEFAULT it holds only the key columns, the rest are
	// [ValueAbsent].
	New, Old   []Value
	Pos        Pos
	XID        uint32
	CommitTime time.Time
}

// Relation describes a published table as the stream last announced it.
// Postgres re-announces it after ALTER TABLE, before the next change, and the
// stream then makes a new Relation: one that has been handed out is never
// changed, so consumers may cache what they derive from it by pointer.
type Relation struct {
	ID      uint32
	Schema  string
	Table   string
	Columns []Column
	// ReplicaIdentity is 'd' (default: primary key), 'n' (nothing), 'f' (full)
	// or 'i' (index).
	ReplicaIdentity byte
}

// QualifiedName is "schema.table".
func (r *Relation) QualifiedName() string { return r.Schema + "." + r.Table }

// Column is one column of a [Relation].
type Column struct {
	Name string
	Type *Type
	// Key is true for the columns of the replica identity (usually the primary key).
	Key bool
	// PrimaryKey is true for the columns of the table's primary key, whatever
	// the replica identity (with REPLICA IDENTITY FULL every column is Key).
	PrimaryKey bool
	// TypeModifier is pg_attribute.atttypmod, as the Relation message sends
	// it: -1 for none; for numeric(p,s) ((p << 16) | s) + 4.
	TypeModifier int32
}

// Type describes a column's data type, resolved from pg_type.
type Type struct {
	OID  uint32
	Name string // pg_type.typname, e.g. "int4", "numeric", "_text", or an enum's name
	// Kind is pg_type.typtype: 'b' base, 'e' enum, 'd' domain, 'r' range,
	// 'c' composite, 'm' multirange, 'p' pseudo.
	Kind byte
	Elem *Type // the element type of an array type
	Base *Type // the underlying type of a domain
}

// ValueKind tells a present value from SQL NULL and from a TOASTed value that
// the stream did not send because it did not change.
type ValueKind byte

const (
	ValueText      ValueKind = 't' // Text holds Postgres's text output of the value
	ValueNull      ValueKind = 'n' // SQL NULL
	ValueUnchanged ValueKind = 'u' // unchanged TOASTed value: not sent, not NULL
	ValueAbsent    ValueKind = 0   // not part of this image (e.g. non-key column of an old row)
)

// Value is one column's value in a row image.
type Value struct {
	Kind ValueKind
	Text []byte
}

func (*Begin) isMessage()          {}
func (*Commit) isMessage()         {}
func (*Keepalive) isMessage()      {}
func (*LogicalMessage) isMessage() {}
func (*Change) isMessage()         {}

// ParseLSN parses Postgres's text form of a WAL position.
func ParseLSN(s string) (LSN, error) { return pglogrepl.ParseLSN(s) }
