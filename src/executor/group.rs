//! A shell stage's processes: who they are, safely despite pid reuse, and how to end them.
//!
//! Each shell attempt runs in a process group of its own, led by its `sh`. Before it
//! starts, a token is recorded that every process of it inherits in its environment
//! (`DAGRUN_ATTEMPT`), so that a process that moves to a group of its own (GNU `timeout`
//! does, as does `set -m`) is still known as the attempt's; once it has started, its group
//! and the leader's start time are recorded too. From these a later build finds what a
//! killed build left running and ends it. An attempt's processes are always ended, whatever
//! its outcome, before its outputs are hashed or its next attempt starts: no background
//! child may write behind the result's back. (A process that both leaves the group and
//! clears its environment, as a daemon may, is beyond reach, as it is for make and ninja.)

use std::io;
use std::time::{Duration, Instant};

use rustix::process::{
    Pid, Signal, WaitOptions, kill_process, kill_process_group, test_kill_process_group, waitpgid, waitpid,
};

/// How long ending an attempt's processes may take before dagrun gives up on it (a process stuck in
/// uninterruptible I/O ignores even SIGKILL for a while).
const END_DEADLINE: Duration = Duration::from_secs(10);

/// The environment variable holding an attempt's token.
pub const TOKEN_VAR: &str = "DAGRUN_ATTEMPT";

/// A shell attempt's process group as recorded in `stage_runs`: its id (the leader's pid)
/// and the leader's identity `BOOT_ID:START_TICKS`, which no other process shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessGroup {
    pub pgid: i32,
    pub identity: String,
}

impl ProcessGroup {
    /// The group that `leader` (a process that called `setpgid(0, 0)`) leads.
    pub fn led_by(leader: u32) -> io::Result<ProcessGroup> {
        let pgid = i32::try_from(leader).map_err(|_| io::Error::other("pid out of range"))?;
        let stat = ProcStat::read(pgid).ok_or_else(|| io::Error::other("the stage's process vanished"))?;
        Ok(ProcessGroup { pgid, identity: format!("{}:{}", boot_id()?, stat.start_ticks) })
    }

    /// Whether the group's leader still runs (same boot, same start time): then every
    /// process of the group is this attempt's.
    fn leader_alive(&self) -> bool {
        let Some((boot, start)) = self.identity.split_once(':') else { return false };
        let same_boot = boot_id().is_ok_and(|now| now == boot);
        same_boot
            && ProcStat::read(self.pgid)
                .is_some_and(|leader| leader.state != 'Z' && start.parse() == Ok(leader.start_ticks))
    }
}

/// What a dead build recorded of an attempt it left `running`: the token its processes
/// carry, and its group once it had started.
#[derive(Debug, Clone, Default)]
pub struct Unfinished {
    pub token: Option<String>,
    pub group: Option<ProcessGroup>,
}

/// Processes of a stage that did not exit after SIGKILL.
#[derive(Debug, thiserror::Error)]
#[error("its processes did not exit after SIGKILL ({detail}); end them by hand and build again")]
pub struct GroupSurvives {
    pub detail: String,
}

impl Unfinished {
    /// Its live processes: those carrying its token, and, while the recorded leader still
    /// runs, every process of its group (even one that cleared its environment). The
    /// leader's start time tells a reused pid apart; the token is unique.
    pub fn survivors(&self) -> io::Result<Vec<i32>> {
        let group = self.group.as_ref().filter(|group| group.leader_alive()).map(|group| group.pgid);
        let wanted = self.token.as_ref().map(|token| format!("{TOKEN_VAR}={token}"));
        if group.is_none() && wanted.is_none() {
            return Ok(Vec::new());
        }
        let mut members = Vec::new();
        for entry in std::fs::read_dir("/proc")? {
            let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
            // A process may exit while the scan reads it: skip what cannot be read.
            let Some(stat) = ProcStat::read(pid) else { continue };
            if stat.state == 'Z' || pid == std::process::id() as i32 {
                continue;
            }
            let ours = group.is_some_and(|pgid| stat.pgrp == pgid)
                || wanted.as_deref().is_some_and(|wanted| carries(pid, wanted));
            if ours {
                members.push(pid);
            }
        }
        Ok(members)
    }

    /// Kills what survives of the attempt and waits until it is gone. Returns how many
    /// processes were ended.
    pub fn end_survivors(&self) -> Result<usize, GroupSurvives> {
        let unreadable = |err: io::Error| GroupSurvives { detail: format!("cannot read /proc: {err}") };
        let first = self.survivors().map_err(unreadable)?;
        if first.is_empty() {
            return Ok(0);
        }
        let deadline = Instant::now() + END_DEADLINE;
        let mut pause = Duration::from_millis(1);
        loop {
            let alive = self.survivors().map_err(unreadable)?;
            if alive.is_empty() {
                return Ok(first.len());
            }
            if Instant::now() > deadline {
                let pids: Vec<String> = alive.iter().map(ToString::to_string).collect();
                return Err(GroupSurvives { detail: format!("pids {}", pids.join(" ")) });
            }
            // Each by pid: they are not dagrun's children, and their ids are only known
            // to be theirs while the checks above hold.
            for pid in alive {
                if let Some(pid) = Pid::from_raw(pid) {
                    let _ = kill_process(pid, Signal::KILL);
                }
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
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
pub fn reap_attempt(pgid: u32, token: &str) -> Result<(), GroupSurvives> {
    let Some(group) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else { return Ok(()) };
    let deadline = Instant::now() + END_DEADLINE;
    let wanted = format!("{TOKEN_VAR}={token}");
    let mut pause = Duration::from_micros(200);
    loop {
        while let Ok(Some(_)) = waitpgid(group, WaitOptions::NOHANG) {}
        let group_left = test_kill_process_group(group).is_ok();
        let strays = strays(&wanted);
        if !group_left && strays.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(GroupSurvives { detail: "processes of the stage stay after SIGKILL".into() });
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
/// environment, with their process groups: what of an attempt left its group. Cheap: a few
/// small files under /proc/self, not a scan of every process.
fn strays(wanted: &str) -> Vec<(i32, i32)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    let mut found = Vec::new();
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else { continue };
        for pid in children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            if let Some(stat) = ProcStat::read(pid)
                && stat.state != 'Z'
                && carries(pid, wanted)
            {
                found.push((pid, stat.pgrp));
            }
        }
    }
    found
}

/// Makes dagrun the reaper of its stages' orphans (Linux's child subreaper), so that a
/// stage's background child that outlives its shell is reparented to dagrun and can be
/// ended and reaped, instead of lingering as a zombie where the system's init does not reap.
pub fn become_subreaper() {
    let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
}

/// A token no other attempt shares, for the stage's environment.
pub fn attempt_token(stage: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = blake3::Hasher::new();
    hasher.update(stage.as_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    hasher.update(&now.as_nanos().to_le_bytes());
    hasher.finalize().to_hex()[..24].to_string()
}

/// Whether process `pid` has the variable `wanted` (`NAME=value`) in its environment
/// (false when that cannot be read: then it cannot be shown to be ours).
fn carries(pid: i32, wanted: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
    environ.split(|&b| b == 0).any(|var| var == wanted.as_bytes())
}

/// The fields of `/proc/PID/stat` that identify a process and its group.
struct ProcStat {
    state: char,
    pgrp: i32,
    start_ticks: u64,
}

impl ProcStat {
    /// `None` when the process does not exist (any more) or cannot be read.
    fn read(pid: i32) -> Option<ProcStat> {
        parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }
}

/// Parses `pid (comm) state ppid pgrp ... starttime ...`; the command name may hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// This boot's id, read once.
fn boot_id() -> io::Result<&'static str> {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(id) = BOOT_ID.get() {
        return Ok(id);
    }
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?.trim().to_string();
    Ok(BOOT_ID.get_or_init(|| id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4121 (sh (odd) name) S 4000 4121 4120 0 -1 4194560 96 0 0 0 0 0 0 0 20 0 1 0 987654 2334720 200";
        let stat = parse_stat(line).unwrap();
        assert_eq!((stat.state, stat.pgrp, stat.start_ticks), ('S', 4121, 987654));
    }

    #[test]
    fn a_recorded_group_whose_pid_was_taken_by_another_process_is_not_ours() {
        let me = std::process::id();
        let real = ProcessGroup::led_by(me).unwrap();
        assert!(real.leader_alive());
        let (boot, start) = real.identity.split_once(':').unwrap();
        let start: u64 = start.parse().unwrap();
        let reused = ProcessGroup { pgid: me as i32, identity: format!("{boot}:{}", start + 1) };
        assert!(!reused.leader_alive());
        let rebooted = ProcessGroup { pgid: me as i32, identity: format!("another-boot:{start}") };
        assert!(!rebooted.leader_alive());
        let unknown = Unfinished { token: Some("no-process-has-this".into()), group: Some(reused) };
        assert!(unknown.survivors().unwrap().is_empty());
    }

    #[test]
    fn tokens_differ_between_attempts() {
        assert_ne!(attempt_token("s"), attempt_token("s"));
    }
}
