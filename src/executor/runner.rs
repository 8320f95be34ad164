//! Runs one attempt of one stage: a shell command or a built-in, with its log.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::watchdog::{KillCause, Watchdog};
use crate::builtin::{Builtin, BuiltinContext};
use crate::spec::{CommandRef, command_references};
use crate::state::StageStatus;

/// Why an attempt did not succeed.
#[derive(Debug, Clone)]
pub struct AttemptFailure {
    pub status: StageStatus,
    pub message: String,
}

impl AttemptFailure {
    pub fn failed(message: impl Into<String>) -> AttemptFailure {
        AttemptFailure { status: StageStatus::Failed, message: message.into() }
    }
}

/// Quotes a word for `sh`: single quotes, with embedded single quotes closed and escaped.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A param as a shell word: strings verbatim, other values as TOML writes them,
/// arrays as one quoted word per element.
fn param_words(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => shell_quote(s),
        toml::Value::Array(items) => items.iter().map(param_words).collect::<Vec<_>>().join(" "),
        other => shell_quote(&other.to_string()),
    }
}

/// Substitutes `${params.KEY}`, `${inputs}` and `${outputs}`, each shell-quoted, so a
/// value can never be read as shell syntax.
pub fn expand_command(cmd: &str, params: &toml::Table, inputs: &[String], outputs: &[String]) -> String {
    let mut expanded = String::with_capacity(cmd.len());
    let mut last = 0;
    for (range, reference) in command_references(cmd) {
        expanded.push_str(&cmd[last..range.start]);
        match reference {
            CommandRef::Param(key) => expanded.push_str(&params.get(key).map(param_words).unwrap_or_default()),
            CommandRef::Inputs => {
                expanded.push_str(&inputs.iter().map(|p| shell_quote(p)).collect::<Vec<_>>().join(" "))
            }
            CommandRef::Outputs => {
                expanded.push_str(&outputs.iter().map(|p| shell_quote(p)).collect::<Vec<_>>().join(" "))
            }
        }
        last = range.end;
    }
    expanded.push_str(&cmd[last..]);
    expanded
}

/// What a shell attempt needs.
pub struct ShellJob<'a> {
    pub stage: &'a str,
    pub command: &'a str,
    pub root: &'a Path,
    pub log: File,
    pub timeout: Option<Duration>,
}

/// Runs `sh -c COMMAND` in the pipeline directory in a new process group, output to the log.
pub fn run_shell(job: ShellJob<'_>, watchdog: &Watchdog) -> Result<(), AttemptFailure> {
    let stderr = job.log.try_clone().map_err(|e| AttemptFailure::failed(format!("cannot open log: {e}")))?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(job.command)
        .current_dir(job.root)
        .env("DAGRUN_STAGE", job.stage)
        .stdin(Stdio::null())
        .stdout(job.log)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|e| AttemptFailure::failed(format!("cannot start `sh`: {e}")))?;
    let pid = child.id();
    watchdog.watch(pid, job.timeout);
    let waited = child.wait();
    let killed = watchdog.unwatch(pid);
    let status = waited.map_err(|e| AttemptFailure::failed(format!("lost track of the stage's process: {e}")))?;
    match killed {
        Some(KillCause::TimedOut) => {
            let secs = job.timeout.map_or(0, |t| t.as_secs());
            return Err(AttemptFailure {
                status: StageStatus::TimedOut,
                message: format!("timed out after {secs}s; its process group was killed"),
            });
        }
        Some(KillCause::Interrupted) => {
            return Err(AttemptFailure {
                status: StageStatus::Interrupted,
                message: "interrupted; its process group was killed".into(),
            });
        }
        None => {}
    }
    if status.success() {
        return Ok(());
    }
    let message = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "failed".to_string(),
    };
    Err(AttemptFailure::failed(message))
}

/// Runs a built-in stage's function, turning a panic into a failure.
pub fn run_builtin(builtin: &Arc<dyn Builtin>, mut ctx: BuiltinContext<'_>) -> Result<(), AttemptFailure> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builtin.run(&mut ctx)));
    let _ = ctx.log.flush();
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => {
            let _ = writeln!(ctx.log, "error: {err}");
            Err(AttemptFailure::failed(err.to_string()))
        }
        Err(panic) => {
            let text = panic_text(panic.as_ref());
            let _ = writeln!(ctx.log, "panic: {text}");
            Err(AttemptFailure::failed(format!("panicked: {text}")))
        }
    }
}

/// The message a panic carried (`panic!("...")` gives a `&str` or a `String`).
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// The last `lines` lines of a log file (at most 8 KiB of it).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else { return String::new() };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_param_values_stay_one_quoted_word() {
        let params = toml::toml! { msg = "'; rm -rf ~" };
        let cmd = expand_command("echo ${params.msg} > out", &params, &[], &[]);
        assert_eq!(cmd, r#"echo ''\''; rm -rf ~' > out"#);
        let out = Command::new("sh").arg("-c").arg(cmd.replace(" > out", "")).output().unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "'; rm -rf ~\n");
    }

    #[test]
    fn inputs_outputs_and_plain_shell_variables_expand_as_expected() {
        let cmd = expand_command(
            "cat ${inputs} > ${outputs} # ${HOME}",
            &toml::Table::new(),
            &["a b".into(), "c".into()],
            &["o".into()],
        );
        assert_eq!(cmd, "cat 'a b' c > o # ${HOME}");
    }
}
