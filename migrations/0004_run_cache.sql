-- Schema version 4: the run-cache.
-- A stage restored from the run-cache instead of run: `run_count` keeps counting
-- executions; `restore_count` counts restores. stage_runs.status and
-- orchestrator_state.last_status say 'restored'.
ALTER TABLE orchestrator_state ADD COLUMN restore_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN stages_restored INTEGER NOT NULL DEFAULT 0;
