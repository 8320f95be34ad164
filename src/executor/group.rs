//! A shell stage's processes: which they are, and how to end them.
//!
//! Each shell attempt runs in a process group of its own, led by its `sh`. Every process of
//! the attempt inherits a token unique to it in its environment (`DAGRUN_ATTEMPT`), whatever
//! process group it moves to (GNU `timeout` moves, as does `set -m`). A local attempt's token
//! is its run's prefix, recorded in the run's row before any attempt starts, a dash and a
//! number ([`AttemptTokens`]), so the attempt need not wait for its own `stage_runs` row; a
//! cluster job's is recorded in its row before it is submitted. Unlike a pid, a token is
//! never reused, so a later build that finds one of a run left `running` (or of a row left
//! `running`) in a process's environment knows that process is what a killed build left
//! running, and ends it. An attempt's processes are
//! always ended, whatever its outcome, before its outputs are hashed or its next attempt
//! starts: no background child may write behind the result's back. (A process that clears
//! its environment and leaves the group, as a daemon may, is beyond reach, as it is for
//! make and ninja.)

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{
    Pid, Signal, WaitOptions, kill_process, kill_process_group, test_kill_process_group, waitpgid, waitpid,
};

/// How long ending an attempt's processes may take before dagrun gives up on them (a
/// process stuck in uninterruptible I/O ignores even SIGKILL for a while).
const END_DEADLINE: Duration = Duration::from_secs(10);

/// The environment variable holding an attempt's token.
pub const TOKEN_VAR: &str = "DAGRUN_ATTEMPT";

/// The environment variable holding the name of an attempt's stage.
pub const STAGE_VAR: &str = "DAGRUN_STAGE";

/// Processes of a stage that did not exit after SIGKILL.
#[derive(Debug, thiserror::Error)]
#[error("its processes did not exit after SIGKILL ({detail}); end them by hand and build again")]
pub struct ProcessesSurvive {
    pub detail: String,
}

/// Ends the live processes that carry `token` (an attempt a dead build left running) and
/// waits until they are gone; returns how many there were. One that leads a process group
/// (the attempt's `sh`) takes its group with it, so that a member that cleared its
/// environment goes too.
pub fn end_attempt(token: &str) -> Result<usize, ProcessesSurvive> {
    end_carriers(token, None)
}

/// Ends an `sbatch` that a dead build's Slurm attempt left running, so that it cannot submit
/// after the next build looked for its job. Only `sbatch`: on a single-node cluster the job's
/// own processes carry the token too, and ending those is Slurm's business (`scancel`).
pub fn end_submitter(token: &str) -> Result<usize, ProcessesSurvive> {
    end_carriers(token, Some("sbatch"))
}

/// Ends the live processes of the local shell attempts of a run whose build died, recorded
/// or not: those carrying a token that starts with the run's `prefix` (see
/// [`AttemptTokens`]). Returns how many there were of each stage, as each says in its
/// environment (`DAGRUN_STAGE`).
pub fn end_run_attempts(prefix: &str) -> Result<Vec<(String, usize)>, ProcessesSurvive> {
    let wanted = Wanted::Prefix(format!("{TOKEN_VAR}={}", AttemptTokens::start(prefix)));
    let mut stages: Vec<(String, usize)> = Vec::new();
    for found in end_found(&wanted, None)? {
        let stage = found.stage.unwrap_or_else(|| "?".to_string());
        match stages.iter_mut().find(|(s, _)| *s == stage) {
            Some((_, count)) => *count += 1,
            None => stages.push((stage, 1)),
        }
    }
    Ok(stages)
}

/// Ends the live processes that carry `token`, or only those running `program`.
fn end_carriers(token: &str, program: Option<&str>) -> Result<usize, ProcessesSurvive> {
    Ok(end_found(&Wanted::Exact(format!("{TOKEN_VAR}={token}")), program)?.len())
}

/// What marks a process as an attempt's: its token variable, whole or by its start.
enum Wanted {
    Exact(String),
    Prefix(String),
}

impl Wanted {
    /// Whether an environment (`/proc/PID/environ`) holds the token.
    fn carried_by(&self, environ: &[u8]) -> bool {
        environ.split(|&b| b == 0).any(|var| match self {
            Wanted::Exact(wanted) => var == wanted.as_bytes(),
            Wanted::Prefix(prefix) => var.starts_with(prefix.as_bytes()),
        })
    }
}

/// Ends the live processes `wanted` marks (only those running `program`, if given) and
/// waits until they are gone; returns those first found.
fn end_found(wanted: &Wanted, program: Option<&str>) -> Result<Vec<Carrier>, ProcessesSurvive> {
    let unreadable = |err: io::Error| ProcessesSurvive { detail: format!("cannot read /proc: {err}") };
    let ours = |wanted: &Wanted| {
        carriers(wanted)
            .map(|found| found.into_iter().filter(|c| program.is_none_or(|p| runs(c.pid, p))).collect::<Vec<_>>())
    };
    let first = ours(wanted).map_err(unreadable)?;
    if first.is_empty() {
        return Ok(Vec::new());
    }
    let deadline = Instant::now() + END_DEADLINE;
    let mut pause = Duration::from_millis(1);
    loop {
        let alive = ours(wanted).map_err(unreadable)?;
        if alive.is_empty() {
            return Ok(first);
        }
        if Instant::now() > deadline {
            let pids: Vec<String> = alive
                .iter()
                .map(|c| match (&c.stage, wanted) {
                    (Some(stage), Wanted::Prefix(_)) => format!("{} of stage `{stage}`", c.pid),
                    _ => c.pid.to_string(),
                })
                .collect();
            return Err(ProcessesSurvive { detail: format!("pids {}", pids.join(", ")) });
        }
        // Each is alive and carries the token, so its pid (and, for a leader, its group id)
        // is still its own.
        for Carrier { pid, pgrp, .. } in alive {
            if pid == pgrp {
                signal_group(pgrp as u32, Signal::KILL);
            }
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A live process that carries a wanted token.
struct Carrier {
    pid: i32,
    pgrp: i32,
    /// The stage it says it belongs to (`DAGRUN_STAGE`), if it says.
    stage: Option<String>,
}

/// Every live process `wanted` marks, with its group.
fn carriers(wanted: &Wanted) -> io::Result<Vec<Carrier>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
        // A process may exit while the scan reads it: skip what cannot be read.
        if let Some(stat) = ProcStat::read(pid)
            && stat.state != 'Z'
            && let Some(environ) = environ(pid)
            && wanted.carried_by(&environ)
        {
            found.push(Carrier { pid, pgrp: stat.pgrp, stage: stage_named(&environ) });
        }
    }
    Ok(found)
}

/// Sends `signal` to a stage's whole process group. Call it only while the group's leader
/// is unreaped (alive, or a zombie): until then no other process can take the group's id.
pub fn signal_group(pgid: u32, signal: Signal) {
    if let Some(group) = i32::try_from(pgid).ok().and_then(Pid::from_raw) {
        // The group may already be gone; nothing to do then.
        let _ = kill_process_group(group, signal);
    }
}

/// After SIGKILL to the group and the leader's reaping: reaps the group's other members
/// (dagrun is their subreaper), then ends every process of the attempt that left the group
/// (reparented to dagrun as their parents die, and known by their token), until none is left.
pub fn reap_attempt(pgid: u32, token: &str, others: &dyn Fn(i32) -> bool) -> Result<(), ProcessesSurvive> {
    let Some(group) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else { return Ok(()) };
    let deadline = Instant::now() + END_DEADLINE;
    let wanted = Wanted::Exact(format!("{TOKEN_VAR}={token}"));
    let mut pause = Duration::from_micros(200);
    loop {
        while let Ok(Some(_)) = waitpgid(group, WaitOptions::NOHANG) {}
        let group_left = test_kill_process_group(group).is_ok();
        let strays = strays(&wanted, others);
        if !group_left && strays.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ProcessesSurvive { detail: "processes of the stage stay after SIGKILL".into() });
        }
        let _ = kill_process_group(group, Signal::KILL);
        for (pid, pgrp) in strays {
            // A stray may lead a group of its own: kill all of it, then reap the stray.
            if let Some(stray_group) = Pid::from_raw(pgrp)
                && pgrp != pgid as i32
            {
                let _ = kill_process_group(stray_group, Signal::KILL);
            }
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = kill_process(pid, Signal::KILL);
                let _ = waitpid(Some(pid), WaitOptions::NOHANG);
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// dagrun's children (reparented orphans included) that carry `wanted` in their
/// environment, with their process groups: what of an attempt left its group. Cheap: two
/// small files under /proc, not a scan of every process; a child `others` names (another
/// running attempt's leader) is not even read.
///
/// Only two of dagrun's threads can be the parent of one of the attempt's processes: the one
/// that spawned its `sh` (the calling thread), and the one to which Linux hands a child
/// subreaper's orphans: since Linux 3.19 the reaper's first live thread, its leader
/// (`find_new_reaper` in kernel/exit.c), before that the thread that spawned the orphan's
/// ancestor, the calling one again. The calling thread's list is read even where orphans go
/// to the leader: a process its `sh` made with `CLONE_PARENT` (as runc's does) is the calling
/// thread's child. Reading every thread's list cost about 20 system calls a stage. (dagrun's
/// main thread lives as long as its builds; an embedder that ends its main thread alone, with
/// `pthread_exit`, while a build runs would hide reparented strays here.)
fn strays(wanted: &Wanted, others: &dyn Fn(i32) -> bool) -> Vec<(i32, i32)> {
    let leader = std::process::id();
    let caller = rustix::thread::gettid().as_raw_nonzero().get();
    let mut found: Vec<(i32, i32)> = Vec::new();
    let parents: &[i32] = if caller == leader as i32 { &[caller] } else { &[leader as i32, caller] };
    for parent in parents {
        let path = format!("/proc/self/task/{parent}/children");
        let Some(children) = read_proc_file(std::path::Path::new(&path)) else { continue };
        for pid in children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()).filter(|&pid| !others(pid)) {
            if let Some(stat) = ProcStat::read(pid)
                && stat.state != 'Z'
                && environ(pid).is_some_and(|environ| wanted.carried_by(&environ))
            {
                found.push((pid, stat.pgrp));
            }
        }
    }
    found
}

/// A small file under /proc, read without the size lookup `fs::read_to_string` makes first
/// (/proc gives no size): one system call fewer each, and these are read for every stage.
fn read_proc_file(path: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(1 << 20).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Makes dagrun the reaper of its stages' orphans (Linux's child subreaper), so that a
/// stage's background child that outlives its shell is reparented to dagrun and can be
/// ended and reaped, instead of lingering as a zombie where the system's init does not reap.
pub fn become_subreaper() {
    let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
}

/// A token no other attempt shares, for the stage's environment: a cluster job's, which is
/// recorded before the job is submitted. (A local shell attempt's comes from its run's
/// [`AttemptTokens`].)
pub fn attempt_token(stage: &str) -> String {
    crate::unique::hex(stage, 24)
}

/// The tokens of one run's local shell attempts: the run's prefix, recorded with the run
/// before any attempt starts, a dash, and a number. An attempt can then start before its own
/// `stage_runs` row is recorded: a later build that finds the run unfinished ends every
/// process whose token has the prefix ([`end_run_attempts`]).
#[derive(Debug)]
pub struct AttemptTokens {
    prefix: String,
    next: AtomicU64,
}

impl AttemptTokens {
    /// The tokens of the run with `prefix`, as `State::begin_run` recorded it.
    pub fn new(prefix: &str) -> AttemptTokens {
        AttemptTokens { prefix: prefix.to_string(), next: AtomicU64::new(1) }
    }

    pub fn next(&self) -> String {
        format!("{}{}", Self::start(&self.prefix), self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// What every token of the run with `prefix` starts with (and no other run's does).
    fn start(prefix: &str) -> String {
        format!("{prefix}-")
    }

    /// Whether `token` is one the run with `prefix` gave out.
    pub fn of_run(prefix: &str, token: &str) -> bool {
        token.starts_with(&Self::start(prefix))
    }
}

/// Whether process `pid` runs `program` (its command name, as `/proc/PID/comm` gives it).
fn runs(pid: i32, program: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim_end() == program)
}

/// The environment of process `pid`; `None` when it cannot be read: then the process cannot
/// be shown to be ours.
fn environ(pid: i32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/environ")).ok()
}

/// The stage an environment names (`DAGRUN_STAGE`).
fn stage_named(environ: &[u8]) -> Option<String> {
    environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"DAGRUN_STAGE="))
        .map(|name| String::from_utf8_lossy(name).into_owned())
}

/// The fields of `/proc/PID/stat` that dagrun reads: the state and the process group.
struct ProcStat {
    state: char,
    pgrp: i32,
}

impl ProcStat {
    /// `None` when the process does not exist (any more) or cannot be read.
    fn read(pid: i32) -> Option<ProcStat> {
        parse_stat(&read_proc_file(std::path::Path::new(&format!("/proc/{pid}/stat")))?)
    }
}

/// Parses `pid (comm) state ppid pgrp ...`; the command name may hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat { state: fields.first()?.chars().next()?, pgrp: fields.get(2)?.parse().ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4121 (sh (odd) name) S 4000 4121 4120 0 -1 4194560 96 0 0 0 0 0 0 0 20 0 1 0 987654 2334720 200";
        let stat = parse_stat(line).unwrap();
        assert_eq!((stat.state, stat.pgrp), ('S', 4121));
    }

    #[test]
    fn an_attempt_no_process_carries_has_nothing_to_end() {
        assert_eq!(end_attempt(&attempt_token("s")).unwrap(), 0);
    }

    #[test]
    fn tokens_differ_between_attempts() {
        assert_ne!(attempt_token("s"), attempt_token("s"));
    }
}
