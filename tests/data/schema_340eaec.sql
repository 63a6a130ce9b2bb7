-- A database made by release 340eaec (before migrations; models without the enclave signature), with a
-- device, two model versions, a round, an update and a refusal. Made from `git show 340eaec:src/qflare/
-- server/storage/tables.py` with create_all on SQLite, then sqlite3's iterdump (tests/server/test_migrations.py).
BEGIN TRANSACTION;
CREATE TABLE devices (
	device_id VARCHAR(64) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	public_key BLOB NOT NULL, 
	fingerprint VARCHAR(64) NOT NULL, 
	key_source VARCHAR(16) NOT NULL, 
	created_at FLOAT NOT NULL, 
	last_seen_at FLOAT, 
	revoked_at FLOAT, 
	PRIMARY KEY (device_id)
);
INSERT INTO "devices" VALUES('edge_01','active',X'0102','ab12','mlkem',1000.0,1010.0,NULL);
CREATE TABLE enrollment_tokens (
	token_hash VARCHAR(64) NOT NULL, 
	device_id VARCHAR(64), 
	key_source VARCHAR(16) NOT NULL, 
	created_at FLOAT NOT NULL, 
	expires_at FLOAT NOT NULL, 
	used_at FLOAT, 
	used_by VARCHAR(64), 
	PRIMARY KEY (token_hash)
);
CREATE TABLE events (
	event_id INTEGER NOT NULL, 
	ts FLOAT NOT NULL, 
	kind VARCHAR(32) NOT NULL, 
	device_id VARCHAR(64), 
	round_id INTEGER, 
	reason VARCHAR(64), 
	detail TEXT, 
	PRIMARY KEY (event_id)
);
INSERT INTO "events" VALUES(1,1025.0,'request_rejected','edge_01',NULL,'stale_timestamp','old');
CREATE TABLE model_versions (
	version INTEGER NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	spec_fingerprint VARCHAR(64) NOT NULL, 
	blob BLOB NOT NULL, 
	round_id INTEGER, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (version)
);
INSERT INTO "model_versions" VALUES(0,'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',X'00',NULL,1000.0);
INSERT INTO "model_versions" VALUES(1,'cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',X'01',1,1030.0);
CREATE TABLE nonces (
	device_id VARCHAR(64) NOT NULL, 
	nonce VARCHAR(128) NOT NULL, 
	expires_at FLOAT NOT NULL, 
	PRIMARY KEY (device_id, nonce)
);
CREATE TABLE rounds (
	round_id INTEGER NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	base_version INTEGER NOT NULL, 
	selected JSON NOT NULL, 
	opened_at FLOAT NOT NULL, 
	deadline_at FLOAT NOT NULL, 
	closed_at FLOAT, 
	close_reason VARCHAR(32), 
	new_version INTEGER, 
	metrics JSON, 
	PRIMARY KEY (round_id)
);
INSERT INTO "rounds" VALUES(1,'aggregated',0,'["edge_01"]',1000.0,1060.0,1030.0,'all_reported',1,'{"accuracy": 0.5}');
CREATE TABLE updates (
	update_id INTEGER NOT NULL, 
	round_id INTEGER NOT NULL, 
	device_id VARCHAR(64) NOT NULL, 
	num_examples INTEGER NOT NULL, 
	train_loss FLOAT, 
	sha256 VARCHAR(64) NOT NULL, 
	size_bytes INTEGER NOT NULL, 
	blob BLOB, 
	received_at FLOAT NOT NULL, 
	PRIMARY KEY (update_id), 
	CONSTRAINT uq_update_round_device UNIQUE (round_id, device_id), 
	FOREIGN KEY(round_id) REFERENCES rounds (round_id), 
	FOREIGN KEY(device_id) REFERENCES devices (device_id)
);
INSERT INTO "updates" VALUES(1,1,'edge_01',10,0.4,'dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd',2,NULL,1020.0);
CREATE INDEX ix_rounds_status ON rounds (status);
CREATE INDEX ix_events_kind ON events (kind);
CREATE INDEX ix_nonces_expires_at ON nonces (expires_at);
CREATE INDEX ix_updates_round_id ON updates (round_id);
COMMIT;
