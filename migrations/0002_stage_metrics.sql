-- Schema version 2: metrics a stage reports (built-ins: accuracy, PnL, ...), as a JSON
-- object of numbers, e.g. SELECT json_extract(metrics, '$.auc') FROM stage_runs.
ALTER TABLE stage_runs ADD COLUMN metrics TEXT;
