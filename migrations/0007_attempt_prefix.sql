-- Schema version 7: a build's local shell attempts start without waiting for their
-- `stage_runs` row. Each run records, when it begins, a prefix unique to it; the token in
-- the environment of every process of its local shell attempts (`DAGRUN_ATTEMPT`) is that
-- prefix, a dash and a number. A later build that finds the run still `running` (its
-- process died) ends every process carrying a token with the prefix, recorded or not,
-- before anything runs.
ALTER TABLE runs ADD COLUMN attempt_prefix TEXT;
