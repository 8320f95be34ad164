//! A shell stage's process group: who it is, safely despite pid reuse, and how to end it.
//!
//! Each shell attempt runs in a process group of its own, led by its `sh`. The group is
//! recorded (with the leader's start time and the boot it started in) before the command
//! runs, so that a later build can find what a killed build left running and end it. A
//! group is always ended, whatever the attempt's outcome, before its outputs are hashed
//! or its next attempt starts: no background child may write behind the result's back.

use std::io;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions, kill_process, kill_process_group, test_kill_process_group, waitpgid};

/// How long ending a group may take before dagrun gives up on it (a process stuck in
/// uninterruptible I/O ignores even SIGKILL for a while).
const END_DEADLINE: Duration = Duration::from_secs(10);

/// A process group as recorded in `stage_runs`: its id (the leader's pid) and the
/// leader's identity, `BOOT_ID:START_TICKS`, which no other process shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessGroup {
    pub pgid: i32,
    pub identity: String,
}

/// Processes of a recorded group that a dead build left behind and that could not be ended.
#[derive(Debug, thiserror::Error)]
#[error(
    "process group {pgid} ({count} processes) did not exit after SIGKILL; end it by hand (kill -9 -- -{pgid}) and build again"
)]
pub struct GroupSurvives {
    pub pgid: i32,
    pub count: usize,
}

impl ProcessGroup {
    /// The group that `leader` (a process that called `setpgid(0, 0)`) leads.
    pub fn led_by(leader: u32) -> io::Result<ProcessGroup> {
        let pgid = i32::try_from(leader).map_err(|_| io::Error::other("pid out of range"))?;
        let stat = ProcStat::read(pgid)?.ok_or_else(|| io::Error::other("the stage's process vanished"))?;
        Ok(ProcessGroup { pgid, identity: format!("{}:{}", boot_id()?, stat.start_ticks) })
    }

    /// The members of this group that still live, if the group is still the one recorded:
    /// same boot, and no other process has since taken the leader's pid. (Linux reuses a
    /// pid only once no process has it as its group id, so while any member lives, the
    /// group's id still means this group.)
    pub fn survivors(&self) -> io::Result<Vec<i32>> {
        let Some((boot, start)) = self.identity.split_once(':') else { return Ok(Vec::new()) };
        let Ok(start) = start.parse::<u64>() else { return Ok(Vec::new()) };
        if boot != boot_id()? {
            return Ok(Vec::new()); // the machine restarted since: nothing of it survives
        }
        let mut members = Vec::new();
        for entry in std::fs::read_dir("/proc")? {
            let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
            let Some(stat) = ProcStat::read(pid)? else { continue };
            if pid == self.pgid && stat.start_ticks != start {
                return Ok(Vec::new()); // the pid now belongs to another process
            }
            if stat.pgrp == self.pgid && stat.state != 'Z' && stat.start_ticks >= start {
                members.push(pid);
            }
        }
        Ok(members)
    }

    /// Kills what survives of a group recorded by an earlier build, and waits until it is
    /// gone. Returns how many processes were ended.
    pub fn end_survivors(&self) -> Result<usize, GroupSurvives> {
        let survives = |count| GroupSurvives { pgid: self.pgid, count };
        let first = self.survivors().map_err(|_| survives(0))?;
        if first.is_empty() {
            return Ok(0);
        }
        let deadline = Instant::now() + END_DEADLINE;
        let mut pause = Duration::from_millis(1);
        loop {
            let alive = self.survivors().map_err(|_| survives(first.len()))?;
            if alive.is_empty() {
                return Ok(first.len());
            }
            if Instant::now() > deadline {
                return Err(survives(alive.len()));
            }
            // Each member by pid: these processes are not our children, and the group id
            // is only known to be ours while a checked member holds it.
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

/// Sends SIGKILL to a stage's whole group. Call it only while the group's leader is
/// unreaped (alive, or a zombie): until then no other process can take the group's id.
pub fn kill_group(pgid: u32) {
    if let Some(group) = i32::try_from(pgid).ok().and_then(Pid::from_raw) {
        // The group may already be gone; nothing to do then.
        let _ = kill_process_group(group, Signal::KILL);
    }
}

/// After [`kill_group`] and the leader's reaping: reaps the members that were reparented to
/// dagrun (a child subreaper) and waits until the group has no process left.
pub fn reap_group(pgid: u32) -> Result<(), GroupSurvives> {
    let Some(group) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else { return Ok(()) };
    let deadline = Instant::now() + END_DEADLINE;
    let mut pause = Duration::from_micros(200);
    loop {
        while let Ok(Some(_)) = waitpgid(group, WaitOptions::NOHANG) {}
        if test_kill_process_group(group).is_err() {
            return Ok(()); // no process left in the group
        }
        if Instant::now() > deadline {
            return Err(GroupSurvives { pgid: group.as_raw_nonzero().get(), count: 1 });
        }
        // Members still alive (or not yet reparented): kill again, as a member may have
        // forked after the first signal was sent.
        let _ = kill_process_group(group, Signal::KILL);
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Makes dagrun the reaper of its stages' orphans (Linux's child subreaper), so that a
/// stage's background child that outlives its shell is reparented to dagrun and can be
/// reaped, instead of lingering as a zombie where the system's init does not reap.
pub fn become_subreaper() {
    let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
}

/// The fields of `/proc/PID/stat` that identify a process and its group.
struct ProcStat {
    state: char,
    pgrp: i32,
    start_ticks: u64,
}

impl ProcStat {
    /// `None` when the process does not exist (any more).
    fn read(pid: i32) -> io::Result<Option<ProcStat>> {
        let text = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(text) => text,
            Err(err) if matches!(err.kind(), io::ErrorKind::NotFound) || err.raw_os_error() == Some(3) => {
                return Ok(None);
            }
            Err(err) => return Err(err),
        };
        Ok(parse_stat(&text))
    }
}

/// Parses `pid (comm) state ppid pgrp ... starttime ...`; the command name may hold spaces
/// and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4121 (sh (odd) name) S 4000 4121 4000 0 -1 4194560 96 0 0 0 0 0 0 0 20 0 1 0 987654 2334720 200";
        let stat = parse_stat(line).unwrap();
        assert_eq!((stat.state, stat.pgrp, stat.start_ticks), ('S', 4121, 987654));
    }

    #[test]
    fn a_recorded_group_whose_pid_was_taken_by_another_process_has_no_survivors() {
        let me = std::process::id();
        let real = ProcessGroup::led_by(me).unwrap();
        let (boot, start) = real.identity.split_once(':').unwrap();
        let other = ProcessGroup { pgid: me as i32, identity: format!("{boot}:{}", start.parse::<u64>().unwrap() + 1) };
        assert!(other.survivors().unwrap().is_empty());
        let rebooted = ProcessGroup { pgid: me as i32, identity: format!("another-boot:{start}") };
        assert!(rebooted.survivors().unwrap().is_empty());
    }
}
