-- Schema version 5: a token that changes with every change to what a build's plan reads.
-- `.dagrun/state.snapshot` (see src/state/snapshot.rs) holds a copy of those tables made
-- under one token value; it is used only while the token still has that value. The
-- triggers keep the token true whoever writes, dagrun or someone's plain SQL.
CREATE TABLE state_token (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    token INTEGER NOT NULL
);
INSERT INTO state_token (id, token) VALUES (1, random());

CREATE TRIGGER orchestrator_state_inserted AFTER INSERT ON orchestrator_state
BEGIN UPDATE state_token SET token = random(); END;
CREATE TRIGGER orchestrator_state_updated AFTER UPDATE ON orchestrator_state
BEGIN UPDATE state_token SET token = random(); END;
CREATE TRIGGER orchestrator_state_deleted AFTER DELETE ON orchestrator_state
BEGIN UPDATE state_token SET token = random(); END;

CREATE TRIGGER stage_outputs_inserted AFTER INSERT ON stage_outputs
BEGIN UPDATE state_token SET token = random(); END;
CREATE TRIGGER stage_outputs_updated AFTER UPDATE ON stage_outputs
BEGIN UPDATE state_token SET token = random(); END;
CREATE TRIGGER stage_outputs_deleted AFTER DELETE ON stage_outputs
BEGIN UPDATE state_token SET token = random(); END;

CREATE TRIGGER file_hashes_inserted AFTER INSERT ON file_hashes
BEGIN UPDATE state_token SET token = random(); END;
CREATE TRIGGER file_hashes_updated AFTER UPDATE ON file_hashes
BEGIN UPDATE state_token SET token = random(); END;
CREATE TRIGGER file_hashes_deleted AFTER DELETE ON file_hashes
BEGIN UPDATE state_token SET token = random(); END;
