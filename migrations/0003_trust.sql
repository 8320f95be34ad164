-- Schema version 3.
-- What a later build needs to end the processes of a shell attempt a killed build left
-- running: a token unique to the attempt, recorded before it starts and inherited in the
-- environment (DAGRUN_ATTEMPT) by every process it runs, whatever its process group. Unlike
-- a pid, it is never reused.
ALTER TABLE stage_runs ADD COLUMN attempt_token TEXT;
-- Builds look for unfinished rows before they start: keep that lookup off the history.
CREATE INDEX stage_runs_running ON stage_runs (id) WHERE status = 'running';
-- What the stage asked for (`resources` in pipeline.toml), as JSON, for schedulers.
ALTER TABLE stage_runs ADD COLUMN resources TEXT;
-- How many times `dagrun invalidate` marked the stage: a mark made while the stage ran
-- survives that run's success.
ALTER TABLE orchestrator_state ADD COLUMN invalidations INTEGER NOT NULL DEFAULT 0;
-- The stat cache also keys on ctime and the device, as git does: a same-size edit whose
-- mtime was restored (touch -r, cp -p) still changes the ctime. Old rows (0) re-hash once.
ALTER TABLE file_hashes ADD COLUMN ctime_ns INTEGER NOT NULL DEFAULT 0;
ALTER TABLE file_hashes ADD COLUMN dev INTEGER NOT NULL DEFAULT 0;
