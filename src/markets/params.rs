//! Typed access to a stage's params, with errors that name the param and the fix.

use super::StageError;

pub struct Params<'a> {
    stage: &'a str,
    table: &'a toml::Table,
}

impl<'a> Params<'a> {
    pub fn new(stage: &'a str, table: &'a toml::Table) -> Params<'a> {
        Params { stage, table }
    }

    /// An error about param `key`, naming it and the stage.
    pub fn error(&self, key: &str, text: &str) -> StageError {
        StageError::msg(format!("param `{key}` of stage `{}`: {text}", self.stage))
    }

    fn wrong(&self, key: &str, expected: &str) -> StageError {
        StageError::msg(format!("param `{key}` of stage `{}` must be {expected}; fix it in pipeline.toml", self.stage))
    }

    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64, StageError> {
        match self.table.get(key) {
            None => Ok(default),
            Some(toml::Value::Integer(i)) if *i >= 0 => Ok(*i as u64),
            Some(_) => Err(self.wrong(key, "a non-negative integer")),
        }
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, StageError> {
        match self.table.get(key) {
            None => Ok(default),
            Some(toml::Value::Float(f)) if f.is_finite() => Ok(*f),
            Some(toml::Value::Integer(i)) => Ok(*i as f64),
            Some(_) => Err(self.wrong(key, "a number")),
        }
    }

    pub fn fraction_or(&self, key: &str, default: f64) -> Result<f64, StageError> {
        let value = self.f64_or(key, default)?;
        if value > 0.0 && value < 1.0 { Ok(value) } else { Err(self.wrong(key, "between 0 and 1 (exclusive)")) }
    }

    pub fn str_opt(&self, key: &str) -> Result<Option<&'a str>, StageError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong(key, "a string")),
        }
    }

    /// A number, or the word `tune`: `None` means tune it.
    pub fn f64_or_tune(&self, key: &str, default: Option<f64>) -> Result<Option<f64>, StageError> {
        match self.table.get(key) {
            None => Ok(default),
            Some(toml::Value::String(s)) if s == "tune" => Ok(None),
            Some(toml::Value::Float(f)) if f.is_finite() => Ok(Some(*f)),
            Some(toml::Value::Integer(i)) => Ok(Some(*i as f64)),
            Some(_) => Err(self.wrong(key, "a number, or \"tune\" to choose it on the validation period")),
        }
    }

    pub fn f64_list_or(&self, key: &str, default: &[f64]) -> Result<Vec<f64>, StageError> {
        let Some(value) = self.table.get(key) else { return Ok(default.to_vec()) };
        let list =
            value.as_array().filter(|a| !a.is_empty()).ok_or_else(|| self.wrong(key, "a non-empty list of numbers"))?;
        list.iter()
            .map(|v| match v {
                toml::Value::Float(f) if f.is_finite() => Ok(*f),
                toml::Value::Integer(i) => Ok(*i as f64),
                _ => Err(self.wrong(key, "a non-empty list of numbers")),
            })
            .collect()
    }
}
