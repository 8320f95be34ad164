-- Schema version 6: attempts run as a cluster scheduler's jobs (the Slurm executor).
-- `executor` is 'slurm' for such an attempt (NULL: a local process). It is recorded, with
-- the attempt's token (which the job carries as its comment), before the job is submitted;
-- `job_id` once the scheduler has answered. A later build finds the jobs of a killed build
-- by either, and cancels them before anything runs.
ALTER TABLE stage_runs ADD COLUMN executor TEXT;
ALTER TABLE stage_runs ADD COLUMN job_id TEXT;
