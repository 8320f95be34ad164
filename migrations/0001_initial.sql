-- dagrun state, schema version 1. The tables and columns here are a public interface:
-- README.md documents them; change them only through a new migration.

-- One row per stage (component). The first five columns are the seed orchestrator's.
CREATE TABLE orchestrator_state (
    component          TEXT PRIMARY KEY,
    last_run_at        TEXT,                        -- RFC 3339 UTC time of the last successful run
    is_dirty           INTEGER NOT NULL DEFAULT 1,  -- 1: invalidated, or the last run did not succeed
    run_count          INTEGER NOT NULL DEFAULT 0,  -- executions, successful or not
    failure_count      INTEGER NOT NULL DEFAULT 0,  -- executions that failed, timed out or were interrupted
    fingerprint        TEXT,                        -- hex BLAKE3 fingerprint at the last success
    output_hash        TEXT,                        -- hex BLAKE3 of all outputs at the last success
    last_status        TEXT,                        -- success | failed | timed_out | interrupted
    last_duration_ms   INTEGER,
    last_error         TEXT,
    fingerprint_inputs TEXT                         -- JSON: what the fingerprint covered at the last success
);

-- The content hash of each declared output at the stage's last success.
CREATE TABLE stage_outputs (
    component TEXT NOT NULL,
    path      TEXT NOT NULL,
    hash      TEXT NOT NULL,
    PRIMARY KEY (component, path)
) WITHOUT ROWID;

-- One row per build (or agent cycle).
CREATE TABLE runs (
    run_id            INTEGER PRIMARY KEY,
    trigger           TEXT NOT NULL,               -- build | agent-once | agent-scheduled | ...
    started_at        TEXT NOT NULL,
    finished_at       TEXT,
    outcome           TEXT NOT NULL DEFAULT 'running', -- running | success | failed | interrupted
    pid               INTEGER NOT NULL,
    jobs              INTEGER NOT NULL,
    targets           TEXT NOT NULL DEFAULT '',    -- space-separated stages asked for; empty for all
    stages_ran        INTEGER NOT NULL DEFAULT 0,
    stages_cut_off    INTEGER NOT NULL DEFAULT 0,
    stages_up_to_date INTEGER NOT NULL DEFAULT 0,
    stages_failed     INTEGER NOT NULL DEFAULT 0,
    stages_blocked    INTEGER NOT NULL DEFAULT 0
);

-- One row per stage execution (each retry attempt is its own row).
CREATE TABLE stage_runs (
    id          INTEGER PRIMARY KEY,
    run_id      INTEGER NOT NULL REFERENCES runs (run_id),
    component   TEXT NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 1,
    status      TEXT NOT NULL,                     -- running | success | failed | timed_out | interrupted
    reason      TEXT NOT NULL,                     -- why it ran, in words
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    duration_ms INTEGER,
    fingerprint TEXT,
    output_hash TEXT,
    error       TEXT,                              -- the error and the tail of the log, on failure
    log_path    TEXT                               -- relative to the pipeline directory
);
CREATE INDEX stage_runs_by_component ON stage_runs (component, id);
CREATE INDEX stage_runs_by_run ON stage_runs (run_id);

-- The stat cache: a file whose size, mtime and inode are unchanged is not read again.
CREATE TABLE file_hashes (
    path         TEXT PRIMARY KEY,                 -- relative to the pipeline directory
    size         INTEGER NOT NULL,
    mtime_ns     INTEGER NOT NULL,
    inode        INTEGER NOT NULL,
    hash         TEXT NOT NULL,
    cached_at_ns INTEGER NOT NULL
) WITHOUT ROWID;
