//! Runs one attempt of one stage: a shell command or a built-in, with its log.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags};

use super::group;
use super::log::AttemptLog;
use super::spawn::{self, BaseEnvironment, Spawn};
use super::watchdog::{KillCause, Watchdog};
use crate::builtin::{Builtin, BuiltinContext};
use crate::spec::{CommandRef, Quoting, scan_command};
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

    /// The watchdog stopped the attempt (`how`): its timeout passed, or the build was
    /// interrupted.
    pub fn stopped(cause: KillCause, timeout: Option<Duration>, how: &str) -> AttemptFailure {
        match cause {
            KillCause::TimedOut => AttemptFailure {
                status: StageStatus::TimedOut,
                message: format!("timed out after {}s; {how}", timeout.map_or(0, |t| t.as_secs())),
            },
            KillCause::Interrupted => {
                AttemptFailure { status: StageStatus::Interrupted, message: format!("interrupted; {how}") }
            }
        }
    }
}

/// A stage's command ready for `sh -c`: the script refers to each substituted value as a
/// variable, and the values travel in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand {
    pub script: String,
    /// `DAGRUN_ARG_1`, `DAGRUN_ARG_2`, ... in order of appearance.
    pub env: Vec<(String, String)>,
}

/// The start of the variables holding a command's substituted values.
const ARG_PREFIX: &str = "DAGRUN_ARG_";

/// A param's values: strings verbatim, other values as TOML writes them, arrays one value
/// per element.
fn param_values(value: &toml::Value) -> Vec<String> {
    match value {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Array(items) => items.iter().flat_map(param_values).collect(),
        toml::Value::Float(f) => vec![crate::spec::float_text(*f)],
        other => vec![other.to_string()],
    }
}

/// What a command's placeholders stand for.
pub struct CommandValues<'a> {
    pub params: &'a toml::Table,
    /// Each declared input's paths (a glob's matches), in declaration order.
    pub inputs: &'a [Vec<String>],
    pub outputs: &'a [String],
    pub named_inputs: &'a std::collections::BTreeMap<String, usize>,
    pub named_outputs: &'a std::collections::BTreeMap<String, usize>,
}

/// Substitutes `${params.KEY}`, `${inputs}`, `${outputs}`, `${inputs.NAME}` and
/// `${outputs.NAME}`. No value is pasted into the
/// script: each is passed in the environment and the placeholder becomes a reference to it,
/// which the shell expands without parsing the result again, so no value can run whatever
/// quoting surrounds it (the quoting only picks the most faithful reference form):
/// - unquoted: `"$DAGRUN_ARG_1"`, one word per element of a list;
/// - in `"..."` or a here-document body: `${DAGRUN_ARG_1}`, a list joined by spaces;
/// - in `'...'`: `'"$DAGRUN_ARG_1"'`, the quote closed around the reference;
/// - in `$((...))`: `${DAGRUN_ARG_1}` if the value is an integer; otherwise a reference to an
///   unset variable that stops the shell, since bash evaluates the text of a variable in
///   arithmetic (and runs a `$(...)` in an array index there);
/// - in a comment or a quoted here-document: left as written; the shell expands nothing there.
pub fn expand_command(cmd: &str, values: &CommandValues<'_>) -> ShellCommand {
    let mut script = String::with_capacity(cmd.len());
    let mut env: Vec<(String, String)> = Vec::new();
    let mut last = 0;
    for placeholder in scan_command(cmd) {
        script.push_str(&cmd[last..placeholder.range.start]);
        last = placeholder.range.end;
        let values = match placeholder.reference {
            CommandRef::Param(key) => crate::spec::param(values.params, key).map(param_values).unwrap_or_default(),
            CommandRef::Inputs => values.inputs.concat(),
            CommandRef::Outputs => values.outputs.to_vec(),
            CommandRef::Input(name) => {
                values.named_inputs.get(name).map(|&i| values.inputs[i].clone()).unwrap_or_default()
            }
            CommandRef::Output(name) => {
                values.named_outputs.get(name).map(|&i| vec![values.outputs[i].clone()]).unwrap_or_default()
            }
        };
        let mut bind = |value: String| {
            let name = format!("{ARG_PREFIX}{}", env.len() + 1);
            env.push((name.clone(), value));
            name
        };
        let reference = match placeholder.quoting {
            Quoting::Unquoted => values.into_iter().map(|v| format!("\"${}\"", bind(v))).collect::<Vec<_>>().join(" "),
            Quoting::DoubleQuoted => format!("${{{}}}", bind(values.join(" "))),
            Quoting::SingleQuoted => format!("'\"${}\"'", bind(values.join(" "))),
            Quoting::Arithmetic => {
                let value = values.join(" ");
                let integer = value.strip_prefix('-').unwrap_or(&value);
                let integer = !integer.is_empty() && integer.bytes().all(|b| b.is_ascii_digit());
                let name = bind(value);
                // Braced, so that digits after the placeholder (`${params.n}0`) stay out of it.
                if integer { format!("${{{name}}}") } else { format!("${{{name}_IS_NOT_AN_INTEGER?}}") }
            }
            Quoting::Comment | Quoting::QuotedHeredoc => cmd[placeholder.range].to_string(),
        };
        script.push_str(&reference);
    }
    script.push_str(&cmd[last..]);
    ShellCommand { script, env }
}

/// What a shell attempt needs.
pub struct ShellJob<'a> {
    pub stage: &'a str,
    pub command: &'a str,
    /// The environment the build started with (see `is_stage_variable`).
    pub base_env: &'a BaseEnvironment,
    /// Variables the command refers to (the substituted values).
    pub env: &'a [(String, String)],
    pub root: &'a Path,
    pub log: &'a mut AttemptLog,
    pub timeout: Option<Duration>,
    /// The attempt's token, its run's prefix and a number; in its environment (see
    /// `group::TOKEN_VAR` and `group::AttemptTokens`).
    pub token: &'a str,
    /// Called once `sh` has started, or failed to (not when the attempt fails before it
    /// tries: a NUL byte, no `/dev/null`, no pipe).
    pub on_spawned: &'a (dyn Fn() + Sync),
}

/// Runs `sh -c COMMAND` in the pipeline directory in a process group of its own, output to
/// the log. Whatever the outcome, every process of the attempt is dead when this returns.
///
/// The output comes through a pipe that dagrun copies to the log as it arrives, so that a
/// stage that prints nothing makes no log file. Where the kernel has no pidfd (before Linux
/// 5.3) to wait on the stage's exit and its output at once, the log is made first and the
/// stage writes to it itself.
pub fn run_shell(job: ShellJob<'_>, watchdog: &Watchdog) -> Result<(), AttemptFailure> {
    let cannot_start =
        |e: std::io::Error| AttemptFailure::failed(format!("cannot start `sh`: {e}{}", file_limit_hint(&e)));
    let nul = |what: &str| AttemptFailure::failed(format!("{what} holds a NUL byte, which no process can be given"));
    let script = CString::new(job.command).map_err(|_| nul("its command"))?;
    let dir = CString::new(job.root.as_os_str().as_bytes()).map_err(|_| nul("the pipeline directory's path"))?;
    let vars =
        stage_variables(&job).map_err(|key| nul(&format!("the value of {key} (a substituted param or path)")))?;
    let stdin = spawn::dev_null().map_err(cannot_start)?;
    let piped = pidfd_works();
    let output = if piped { Output::pipe() } else { Output::file(job.log) };
    let (output, writer) = output.map_err(|e| {
        let what = if piped { "make a pipe for its output" } else { "open its log" };
        AttemptFailure::failed(format!("cannot {what}: {e}{}", file_limit_hint(&e)))
    })?;
    let spawned = spawn::spawn(&Spawn {
        program: shell(),
        argv: &[c"sh", c"-c", &script],
        base: job.base_env,
        vars: &vars,
        dir: &dir,
        stdio: [stdin.as_fd(), writer.as_fd(), writer.as_fd()],
    });
    // Our copy of the pipe's write end: the pipe then ends when the stage's own processes
    // have closed theirs.
    drop(writer);
    (job.on_spawned)();
    let pid = spawned.map_err(cannot_start)?;
    // The watchdog and the group's functions take the pid as a number.
    let number = pid.as_raw_nonzero().get().unsigned_abs();
    watchdog.watch(number, job.timeout);
    let mut copy = LogCopy::new(job.log);
    let exited = match &output {
        Output::Pipe(reader) => copy.until_exit(reader, pid),
        Output::File => wait_for_exit(pid),
    };
    let killed = watchdog.unwatch(number);
    let status = end_group(pid, job.token, watchdog)?;
    if let Output::Pipe(reader) = &output {
        copy.rest(reader);
    }
    exited.map_err(|e| {
        AttemptFailure::failed(format!("lost track of the stage's process (it was ended): {e}{}", file_limit_hint(&e)))
    })?;
    if let Some(cause) = killed {
        return Err(AttemptFailure::stopped(cause, job.timeout, "its process group was killed"));
    }
    if !status.success() {
        let message = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            _ => "failed".to_string(),
        };
        return Err(AttemptFailure::failed(message));
    }
    match copy.error {
        // The stage's output is lost: do not record it as a success nobody can check.
        Some(e) => Err(AttemptFailure::failed(format!("cannot write its log {}: {e}", copy.log.path().display()))),
        None => Ok(()),
    }
}

/// The hint for running out of file descriptors (each running shell stage holds a few).
fn file_limit_hint(e: &std::io::Error) -> String {
    if matches!(e.raw_os_error(), Some(23 | 24)) { crate::state::open_file_limit_hint() } else { String::new() }
}

/// `sh`, found on `PATH` once rather than at every stage (as `Command` would, trying each
/// directory of `PATH` in turn); `/bin/sh` where `PATH` has none. Only absolute directories:
/// a relative one would be read against the stage's directory, not dagrun's.
fn shell() -> &'static CStr {
    static SHELL: OnceLock<CString> = OnceLock::new();
    SHELL.get_or_init(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let found =
            std::env::split_paths(&path).filter(|dir| dir.is_absolute()).map(|dir| dir.join("sh")).find(|candidate| {
                use std::os::unix::fs::PermissionsExt;
                candidate.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            });
        // A path from `PATH` holds no NUL byte: the environment cannot hold one.
        found.and_then(|sh| CString::new(sh.into_os_string().into_vec()).ok()).unwrap_or_else(|| c"/bin/sh".to_owned())
    })
}

/// The variables a shell attempt is given, each `KEY=VALUE`: its stage's name, its token and
/// the values its command refers to.
///
/// A value with a NUL byte is refused with its variable's name.
fn stage_variables<'j>(job: &'j ShellJob<'_>) -> Result<Vec<CString>, &'j str> {
    let given = [(group::STAGE_VAR, job.stage), (group::TOKEN_VAR, job.token)];
    given
        .into_iter()
        .chain(job.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map(|(key, value)| spawn::variable(key.as_bytes(), value.as_bytes()).map_err(|_| key))
        .collect()
}

/// Whether a shell attempt is given `key` itself (`stage_variables`): an inherited value of
/// it is left out of the base environment, so that it never shadows the attempt's own.
pub fn is_stage_variable(key: &std::ffi::OsStr) -> bool {
    let key = key.as_bytes();
    key == group::STAGE_VAR.as_bytes() || key == group::TOKEN_VAR.as_bytes() || key.starts_with(ARG_PREFIX.as_bytes())
}

/// Whether this kernel gives a process's pidfd (Linux 5.3 and later).
fn pidfd_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| rustix::process::pidfd_open(rustix::process::getpid(), PidfdFlags::empty()).is_ok())
}

/// Where a shell attempt's stdout and stderr go, both to the same place so that their lines
/// keep their order.
enum Output {
    /// A pipe's read end; the write end is the child's.
    Pipe(File),
    /// The log file itself.
    File,
}

impl Output {
    /// The pipe, and its write end for the stage.
    fn pipe() -> std::io::Result<(Output, OwnedFd)> {
        let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        Ok((Output::Pipe(File::from(reader)), writer))
    }

    /// The log, which the stage writes itself.
    fn file(log: &mut AttemptLog) -> std::io::Result<(Output, OwnedFd)> {
        Ok((Output::File, log.file()?.try_clone()?.into()))
    }
}

/// Copies a stage's output from its pipe to its log. A write that fails (a full disk) is
/// kept to report, and the pipe is still read, so that the stage never blocks on it.
struct LogCopy<'a> {
    log: &'a mut AttemptLog,
    error: Option<std::io::Error>,
    buf: Vec<u8>,
    /// The pipe has ended: every writer closed it.
    ended: bool,
}

/// The most a stage's output is copied by at once.
const BUF_MAX: usize = 64 * 1024;

impl<'a> LogCopy<'a> {
    fn new(log: &'a mut AttemptLog) -> LogCopy<'a> {
        // Small at first: most stages print little or nothing. It grows for one that fills it.
        LogCopy { log, error: None, buf: vec![0; 4096], ended: false }
    }

    /// Copies until the group's leader has exited (without reaping it, as `wait_for_exit`).
    fn until_exit(&mut self, reader: &File, pid: Pid) -> std::io::Result<()> {
        use rustix::event::{PollFd, PollFlags, poll};
        let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())?;
        loop {
            let mut fds = [PollFd::new(&pidfd, PollFlags::IN), PollFd::new(reader, PollFlags::IN)];
            let watched = if self.ended { &mut fds[..1] } else { &mut fds[..] };
            match poll(watched, None) {
                Err(rustix::io::Errno::INTR) => continue,
                Err(err) => return Err(err.into()),
                Ok(_) => {}
            }
            let exited = !watched[0].revents().is_empty();
            if !self.ended && !watched[1].revents().is_empty() {
                self.copy_some(reader)?;
            }
            if exited {
                return Ok(());
            }
        }
    }

    /// Copies what is left in the pipe once every process of the attempt is dead: at most
    /// what a pipe can hold, without waiting, so that a writer that escaped the group can
    /// neither hold the stage up nor fill the disk through it.
    fn rest(&mut self, reader: &File) {
        const PIPE_MAX: usize = 1 << 20; // Linux's default `pipe-max-size`
        if self.ended || rustix::io::ioctl_fionbio(reader, true).is_err() {
            return;
        }
        let mut copied = 0;
        while copied < PIPE_MAX && !self.ended && self.copy_some(reader).is_ok() {
            copied += self.buf.len();
        }
    }

    /// One read from the pipe, written to the log; at its end, `ended` is set.
    fn copy_some(&mut self, mut reader: &File) -> std::io::Result<()> {
        let n = match reader.read(&mut self.buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        };
        self.ended = n == 0;
        if n == self.buf.len() && n < BUF_MAX {
            self.buf.resize(BUF_MAX, 0);
        }
        if n > 0
            && self.error.is_none()
            && let Err(e) = self.log.write_all(&self.buf[..n])
        {
            self.error = Some(e);
        }
        Ok(())
    }
}

/// Waits until the group's leader has exited, without reaping it: its zombie keeps the
/// group id from being reused while the rest of the group is killed.
fn wait_for_exit(pid: Pid) -> std::io::Result<()> {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    loop {
        match waitid(WaitId::Pid(pid), WaitIdOptions::EXITED | WaitIdOptions::NOWAIT) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// Kills the attempt's whole group, reaps its leader, then ends every other process of the
/// attempt: no background child may outlive it and write an output after it is hashed (or
/// while a retry runs). Returns the leader's exit status.
fn end_group(pid: Pid, token: &str, watchdog: &Watchdog) -> Result<ExitStatus, AttemptFailure> {
    let number = pid.as_raw_nonzero().get().unsigned_abs();
    group::signal_group(number, rustix::process::Signal::KILL);
    let status =
        spawn::reap(pid).map_err(|e| AttemptFailure::failed(format!("lost track of the stage's process: {e}")))?;
    // Another running attempt's leader, a child of dagrun too, is not this attempt's.
    let others = |pid: i32| watchdog.watches(pid);
    group::reap_attempt(number, token, &others).map_err(|err| AttemptFailure::failed(err.to_string()))?;
    Ok(status)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_variables_each_stage_is_given_are_known_by_name() {
        for given in ["DAGRUN_STAGE", "DAGRUN_ATTEMPT", "DAGRUN_ARG_1", "DAGRUN_ARG_12"] {
            assert!(is_stage_variable(given.as_ref()), "{given}");
        }
        for inherited in ["PATH", "DAGRUN_CACHE_DIR", "DAGRUN_ARGS", "DAGRUN_STAGES", "dagrun_stage"] {
            assert!(!is_stage_variable(inherited.as_ref()), "{inherited}");
        }
    }

    /// Runs an expanded command with `sh -c` and its environment; its stdout.
    fn run(command: &ShellCommand) -> String {
        let out = Command::new("sh").arg("-c").arg(&command.script).envs(command.env.clone()).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    /// `expand_command` with each input declared on its own and nothing named.
    fn expand(cmd: &str, params: &toml::Table, inputs: &[String], outputs: &[String]) -> ShellCommand {
        let inputs: Vec<Vec<String>> = inputs.iter().map(|i| vec![i.clone()]).collect();
        let none = std::collections::BTreeMap::new();
        let values = CommandValues { params, inputs: &inputs, outputs, named_inputs: &none, named_outputs: &none };
        expand_command(cmd, &values)
    }

    #[test]
    fn named_inputs_and_outputs_stand_for_their_own_paths() {
        let inputs = vec![vec!["a.csv".to_string(), "b c.csv".to_string()], vec!["model.bin".to_string()]];
        let outputs = ["report.md".to_string(), "plots".to_string()];
        let named_inputs = [("data".to_string(), 0), ("model".to_string(), 1)].into();
        let named_outputs = [("plots".to_string(), 1)].into();
        let params = toml::Table::new();
        let values = CommandValues {
            params: &params,
            inputs: &inputs,
            outputs: &outputs,
            named_inputs: &named_inputs,
            named_outputs: &named_outputs,
        };
        let cmd = expand_command("printf '[%s]' ${inputs.model} ${inputs.data} ${outputs.plots} ${inputs}", &values);
        assert_eq!(run(&cmd), "[model.bin][a.csv][b c.csv][plots][a.csv][b c.csv][model.bin]");
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_param_is_passed_in_the_environment_and_referred_to_in_every_quoting() {
        let params = toml::toml! { msg = "'; echo \"$(id)\" `id` '" };
        let cmd = expand(r#"printf '%s|' ${params.msg} "${params.msg}" '${params.msg}'"#, &params, &[], &[]);
        assert_eq!(cmd.script, r#"printf '%s|' "$DAGRUN_ARG_1" "${DAGRUN_ARG_2}" ''"$DAGRUN_ARG_3"''"#);
        let value = "'; echo \"$(id)\" `id` '";
        assert_eq!(cmd.env, env(&[("DAGRUN_ARG_1", value), ("DAGRUN_ARG_2", value), ("DAGRUN_ARG_3", value)]));
        assert_eq!(run(&cmd), format!("{value}|{value}|{value}|"));
    }

    #[test]
    fn inputs_outputs_and_plain_shell_variables_expand_as_expected() {
        let cmd = expand(
            "cat ${inputs} > ${outputs} # ${HOME} ${inputs}",
            &toml::Table::new(),
            &["a b".into(), "c".into()],
            &["o".into()],
        );
        assert_eq!(cmd.script, r#"cat "$DAGRUN_ARG_1" "$DAGRUN_ARG_2" > "$DAGRUN_ARG_3" # ${HOME} ${inputs}"#);
        assert_eq!(cmd.env, env(&[("DAGRUN_ARG_1", "a b"), ("DAGRUN_ARG_2", "c"), ("DAGRUN_ARG_3", "o")]));
    }

    #[test]
    fn a_list_is_one_word_per_element_bare_and_one_string_in_quotes() {
        let params = toml::toml! { words = ["a b", 2, true] };
        let cmd = expand(r#"printf '[%s]' ${params.words} "${params.words}""#, &params, &[], &[]);
        assert_eq!(run(&cmd), "[a b][2][true][a b 2 true]");
    }

    #[test]
    fn an_integer_works_in_arithmetic_and_anything_else_stops_the_shell() {
        let params = toml::toml! { n = 20 };
        let cmd = expand("echo $(( ${params.n} * 2 ))", &params, &[], &[]);
        assert_eq!(cmd.script, "echo $(( ${DAGRUN_ARG_1} * 2 ))");
        assert_eq!(run(&cmd), "40\n");
        let params = toml::toml! { n = "a[$(echo INJECTED >&2)]" };
        let cmd = expand("echo $(( ${params.n} * 2 )); echo after", &params, &[], &[]);
        assert_eq!(cmd.script, "echo $(( ${DAGRUN_ARG_1_IS_NOT_AN_INTEGER?} * 2 )); echo after");
        let out = Command::new("bash").arg("-c").arg(&cmd.script).envs(cmd.env).output().unwrap();
        assert!(!out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("INJECTED"), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn a_placeholder_in_a_comment_or_quoted_here_document_is_left_as_written() {
        let params = toml::toml! { v = "x\necho PWNED" };
        let text = "cat <<'EOF'\n${params.v}\nEOF\n# ${params.v}\ncat <<EOF\n${params.v}\nEOF";
        let cmd = expand(text, &params, &[], &[]);
        assert_eq!(cmd.script, "cat <<'EOF'\n${params.v}\nEOF\n# ${params.v}\ncat <<EOF\n${DAGRUN_ARG_1}\nEOF");
        assert_eq!(run(&cmd), "${params.v}\nx\necho PWNED\n");
    }
}
