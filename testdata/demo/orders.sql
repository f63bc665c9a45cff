-- Each order and its event are written in ONE local transaction: the outbox
-- pattern. The relay publishes the event once the transaction commits.
BEGIN;
WITH o AS (INSERT INTO orders (customer, total) VALUES ('alice', 42.50) RETURNING id, customer, total)
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
SELECT 'order', o.id::text, 'OrderPlaced', jsonb_build_object('orderId', o.id, 'customer', o.customer, 'total', o.total::text) FROM o;
COMMIT;

BEGIN;
WITH o AS (INSERT INTO orders (customer, total) VALUES ('bob', 7.99) RETURNING id, customer, total)
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
SELECT 'order', o.id::text, 'OrderPlaced', jsonb_build_object('orderId', o.id, 'customer', o.customer, 'total', o.total::text) FROM o;
COMMIT;

-- An order paid in the same transaction: two events, same key, in order.
BEGIN;
WITH o AS (INSERT INTO orders (customer, total) VALUES ('carol', 120.00) RETURNING id, customer, total)
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
SELECT 'order', o.id::text, t.type, jsonb_build_object('orderId', o.id, 'customer', o.customer, 'total', o.total::text)
FROM o, (VALUES (1, 'OrderPlaced'), (2, 'OrderPaid')) AS t(n, type) ORDER BY t.n;
-- "insert then delete in the same transaction" keeps the outbox empty and
-- still publishes: deletes of outbox rows are ignored.
DELETE FROM outbox;
COMMIT;
