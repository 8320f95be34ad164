//! Starts a shell attempt's `sh`: a vfork-style `clone` on a stack the calling thread keeps,
//! with an environment read once a build.
//!
//! Why not std's `Command`: it goes through glibc's `posix_spawn`, which maps a stack for
//! every child and unmaps it once the child has exec'd. In a process with several threads,
//! that unmap makes the kernel interrupt the other cores to flush their TLBs and wait for
//! them, and on a virtual machine each interrupt is a trip through the hypervisor. `Command`
//! also copies the whole environment into new strings at every spawn. Measured on the
//! 2-core VM (benches/full_build_turns.py's machine; the spawning thread's own CPU, with two
//! other threads running): glibc's `posix_spawn` of `sh -c true` 72 µs, this 22 µs; in
//! dagrun's full build of 1,000 small stages, `Command::spawn` was about 100 µs a stage.
//!
//! The child does what glibc's `posix_spawn` child does for the attributes `Command` gave it,
//! in the same order, and one thing more: it starts on its parent's core (see `Placement`).
//! It runs on its own stack, shares the parent's memory while the parent thread waits
//! (`CLONE_VFORK`), makes only system calls, allocates nothing, and ends in `execve` or
//! `_exit`. Every signal is blocked from before the clone until the child has set every
//! handled signal (and SIGPIPE, which Rust ignores) back to its default, so no handler of
//! dagrun's can run in the child.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{CStr, CString, OsStr, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::ptr::{null, null_mut};

use rustix::process::Pid;

/// The environment each stage of a build starts from: dagrun's own when the build began,
/// without the variables a stage is given (`given` says which), so that a stage's own value is
/// never shadowed by an inherited one.
#[derive(Debug)]
pub struct BaseEnvironment {
    vars: Vec<CString>,
}

impl BaseEnvironment {
    pub fn capture(given: impl Fn(&OsStr) -> bool) -> BaseEnvironment {
        let vars = std::env::vars_os()
            .filter(|(key, _)| !given(key))
            .filter_map(|(key, value)| variable(key.as_bytes(), value.as_bytes()).ok())
            .collect();
        BaseEnvironment { vars }
    }
}

/// `KEY=VALUE`, as an environment holds it.
pub fn variable(key: &[u8], value: &[u8]) -> Result<CString, std::ffi::NulError> {
    let mut bytes = Vec::with_capacity(key.len() + 1 + value.len());
    bytes.extend_from_slice(key);
    bytes.push(b'=');
    bytes.extend_from_slice(value);
    CString::new(bytes)
}

/// What to start: `program` with `argv` in `dir`, its environment the base one and then
/// `vars`, its stdin, stdout and stderr duplicated from `stdio`, as the leader of a new
/// process group.
pub struct Spawn<'a> {
    pub program: &'a CStr,
    pub argv: &'a [&'a CStr],
    pub base: &'a BaseEnvironment,
    pub vars: &'a [CString],
    pub dir: &'a CStr,
    pub stdio: [BorrowedFd<'a>; 3],
}

/// Starts the process and returns its pid once it has exec'd; the error of whichever step
/// failed in the child (`chdir`, `execve`, ...) otherwise, the child then reaped.
pub fn spawn(what: &Spawn<'_>) -> io::Result<Pid> {
    let argv: Vec<*const c_char> = what.argv.iter().map(|arg| arg.as_ptr()).chain([null()]).collect();
    let envp: Vec<*const c_char> =
        what.base.vars.iter().chain(what.vars).map(|var| var.as_ptr()).chain([null()]).collect();
    // The child puts each of `stdio` onto 0, 1 and 2 in turn: a source that is itself 0, 1
    // or 2 could be overwritten before its turn. Rust's runtime keeps 0 to 2 open, so this
    // is only for an embedder that closed them.
    let mut raised: Vec<OwnedFd> = Vec::new();
    let mut stdio = [0; 3];
    for (slot, fd) in stdio.iter_mut().zip(what.stdio) {
        *slot = if fd.as_raw_fd() > 2 {
            fd.as_raw_fd()
        } else {
            raised.push(rustix::io::fcntl_dupfd_cloexec(fd, 3)?);
            raised.last().map(|fd| fd.as_raw_fd()).unwrap_or_default()
        };
    }
    let mut args = ChildArgs {
        placement: Placement::here(),
        program: what.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        dir: what.dir.as_ptr(),
        stdio,
        error: 0,
    };
    let pid = STACK.with(|stack| {
        let mut stack = stack.borrow_mut();
        let stack = match &mut *stack {
            Some(stack) => stack,
            empty => empty.insert(ChildStack::new()?),
        };
        let before = block_signals()?;
        // SAFETY: `child` only reads `args` and the strings it points to, which live until
        // this returns; with CLONE_VFORK, `clone` returns only once the child has exec'd or
        // exited, so the child is done with `args` and with the stack, which this thread alone
        // uses. Every signal is blocked (see `child`).
        let pid = unsafe {
            libc::clone(
                child,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&raw mut args).cast::<c_void>(),
            )
        };
        let error = io::Error::last_os_error();
        restore_signals(before);
        if pid < 0 { Err(error) } else { Ok(pid) }
    })?;
    drop(raised);
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::other("clone returned pid 0"))?;
    // SAFETY: the child wrote `error` (or not) before it exec'd or exited, which `clone`
    // waited for; volatile, since the compiler does not see that write.
    let error = unsafe { std::ptr::read_volatile(&raw const args.error) };
    if error != 0 {
        let _ = reap(pid);
        return Err(io::Error::from_raw_os_error(error));
    }
    Ok(pid)
}

/// Waits for a child to exit and reaps it.
pub fn reap(pid: Pid) -> io::Result<ExitStatus> {
    use rustix::process::{WaitOptions, waitpid};
    loop {
        match waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => return Ok(ExitStatus::from_raw(status.as_raw())),
            Ok(None) => return Err(io::Error::other("waitpid returned no status")),
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// The kernel's signal set: one bit a signal, 64 signals on every Linux architecture but MIPS.
type KernelSignals = u64;
#[cfg(any(target_arch = "mips", target_arch = "mips64", target_arch = "mips32r6", target_arch = "mips64r6"))]
compile_error!("spawn.rs gives the kernel a 64-bit signal set; MIPS's has 128 bits");

/// Blocks every signal in the calling thread, glibc's own two (32 and 33) included, as glibc's
/// `posix_spawn` does (`sigfillset` and `pthread_sigmask` leave those two out); returns the
/// mask before. Through the system call itself, which takes the kernel's set.
fn block_signals() -> io::Result<KernelSignals> {
    let all: KernelSignals = !0;
    let mut before: KernelSignals = 0;
    // SAFETY: two valid sets of the size given.
    let done = unsafe {
        libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_BLOCK, &raw const all, &raw mut before, size_of_val(&all))
    };
    if done != 0 { Err(io::Error::last_os_error()) } else { Ok(before) }
}

/// Sets the calling thread's mask back to what `block_signals` returned.
fn restore_signals(before: KernelSignals) {
    // SAFETY: a valid set of the size given; the old one not asked for. Setting a mask that
    // was in force cannot fail.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const before,
            null_mut::<KernelSignals>(),
            size_of_val(&before),
        )
    };
}

/// Where a child starts: on the core of the thread that spawns it.
///
/// Left to itself, Linux puts a new process on the core it judges less loaded. Ours is
/// judged busier (the spawning worker and the coordinator run there), so the child went to
/// the other core, busy with another stage, while this one went idle as soon as the worker
/// waited: idle for about a millisecond, until the load balancer moved a task over. The
/// spawning thread sleeps until the child has exec'd and mostly waits for it after, so its
/// core is the one free. Measured on 2 cores (full builds in turns with ninja): 1.126 ->
/// 1.074 times ninja's wall time at 10,000 small stages (one set of 3 rounds), 0.015 to
/// 0.066 less at 1,000 (four sets). The child is moved whether or not it is there already:
/// moving only those that are not (as the `getcpu` system call tells) measured worse than
/// not moving at all (1.24 times at 10,000), for a reason not found.
///
/// Only when dagrun may run on every online core: the child is then allowed back onto all
/// of them (an all-ones set, which the kernel keeps as the child's own and meets with its
/// cpuset, so the stage follows the cpuset as it grows or shrinks, as an unplaced one does).
/// A dagrun held to some cores (`taskset`, a cpuset smaller than the machine) leaves its
/// children where Linux puts them, held as it is.
struct Placement {
    /// The spawning thread's core alone.
    here: libc::cpu_set_t,
}

/// Every core, now or later.
const EVERY_CORE: libc::cpu_set_t = {
    // SAFETY: `cpu_set_t` is an array of integers: all ones is a set of every core.
    unsafe { std::mem::transmute([0xffu8; size_of::<libc::cpu_set_t>()]) }
};

impl Placement {
    /// This thread's core, if dagrun may run on every online core.
    fn here() -> Option<Placement> {
        // SAFETY: system calls into locals of the sizes given.
        unsafe {
            let mut allowed = std::mem::zeroed::<libc::cpu_set_t>();
            // Fails on a machine with more than 1,024 possible cores (the set's size).
            if libc::sched_getaffinity(0, size_of_val(&allowed), &mut allowed) != 0
                || libc::CPU_COUNT(&allowed) as usize != online_cores()
            {
                return None;
            }
            let cpu = usize::try_from(libc::sched_getcpu()).ok()?;
            let mut here = std::mem::zeroed::<libc::cpu_set_t>();
            libc::CPU_SET(cpu, &mut here);
            Some(Placement { here })
        }
    }
}

/// How many cores are online, read once.
fn online_cores() -> usize {
    static ONLINE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: `sysconf` takes any name and returns -1 for one it does not know.
    *ONLINE.get_or_init(|| usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(0))
}

/// What the child reads, and where it leaves the error of a step that failed.
struct ChildArgs {
    placement: Option<Placement>,
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    dir: *const c_char,
    stdio: [c_int; 3],
    error: c_int,
}

/// The child: moved to its parent's core, signals back to their defaults, a process group of
/// its own, its stdio, its directory, an empty signal mask, then `execve`. Runs with every
/// signal blocked (`spawn`).
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` of `spawn`, alive while the parent thread waits. Each
    // call below is a system call through glibc's plain wrapper (async-signal-safe), on valid
    // pointers, but `SIGRTMAX`, which reads a value glibc set at start; nothing here
    // allocates, takes a lock or unwinds: the child shares the parent's memory, including
    // the heap and the locks of the threads it did not inherit.
    unsafe {
        let args = arg.cast::<ChildArgs>();
        if let Some(placement) = &(*args).placement {
            // If it cannot be moved (the core went meanwhile, a security policy), it starts
            // where it is. Once moved, it must be allowed back everywhere, or not start.
            if libc::sched_setaffinity(0, size_of_val(&placement.here), &placement.here) == 0
                && libc::sched_setaffinity(0, size_of_val(&EVERY_CORE), &EVERY_CORE) != 0
            {
                fail(args);
            }
        }
        // A handler of dagrun's (signal-hook's for SIGINT, SIGTERM and SIGHUP, std's for
        // SIGSEGV and SIGBUS) would run here, in the parent's memory, if its signal came
        // between unblocking and `execve`; `execve` resets handled signals, but only then.
        // glibc's own two signals cannot be read or set through `sigaction` (it refuses them),
        // and glibc sends them only to its threads, never to this process.
        for signal in 1..=libc::SIGRTMAX() {
            let mut action = std::mem::zeroed::<libc::sigaction>();
            if libc::sigaction(signal, null(), &mut action) != 0 {
                continue;
            }
            let handled = action.sa_sigaction != libc::SIG_DFL && action.sa_sigaction != libc::SIG_IGN;
            if handled || signal == libc::SIGPIPE {
                action.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &action, null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail(args);
        }
        for (target, &source) in (0..).zip(&(*args).stdio) {
            if libc::dup2(source, target) < 0 {
                fail(args);
            }
        }
        if libc::chdir((*args).dir) != 0 {
            fail(args);
        }
        let none: KernelSignals = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const none,
            null_mut::<KernelSignals>(),
            size_of_val(&none),
        );
        libc::execve((*args).program, (*args).argv, (*args).envp);
        fail(args)
    }
}

/// Leaves the failed step's error for the parent and ends the child.
///
/// # Safety
/// In the child only, with `args` the parent's `ChildArgs`.
unsafe fn fail(args: *mut ChildArgs) -> ! {
    // SAFETY: as in `child`; errno is the parent thread's (the child shares its TLS), read
    // at once, before anything else can set it.
    unsafe {
        (*args).error = *libc::__errno_location();
        libc::_exit(127)
    }
}

/// The stack a thread's children start on: mapped once, with a guard page below it, and kept
/// for the thread's next spawn.
struct ChildStack {
    base: *mut c_void,
}

/// Enough for `child` (a few small frames and system calls), with room to spare.
const STACK_SIZE: usize = 64 * 1024;
const GUARD_SIZE: usize = 4096;

thread_local! {
    static STACK: RefCell<Option<ChildStack>> = const { RefCell::new(None) };
}

impl ChildStack {
    fn new() -> io::Result<ChildStack> {
        use rustix::mm::{MapFlags, MprotectFlags, ProtFlags, mmap_anonymous, mprotect};
        // SAFETY: a fresh private mapping chosen by the kernel; its lowest page made
        // inaccessible, so that an overflow faults instead of writing below the stack.
        unsafe {
            let base = mmap_anonymous(
                null_mut(),
                GUARD_SIZE + STACK_SIZE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::STACK,
            )?;
            let stack = ChildStack { base };
            mprotect(base, GUARD_SIZE, MprotectFlags::empty())?;
            Ok(stack)
        }
    }

    /// Where the child's stack starts (it grows down): page-aligned, so 16-byte aligned.
    fn top(&mut self) -> *mut c_void {
        // SAFETY: one past the end of the mapping, which is what `clone` takes.
        unsafe { self.base.cast::<u8>().add(GUARD_SIZE + STACK_SIZE).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, used by no child once `spawn` has returned.
        let _ = unsafe { rustix::mm::munmap(self.base, GUARD_SIZE + STACK_SIZE) };
    }
}

/// `/dev/null`, for a child's stdin. Opened for each child, not kept for all: the child's copy
/// shares the open file description, and with it a `flock` or a flag a stage set on its stdin,
/// which would then outlive the stage into every later one.
pub fn dev_null() -> io::Result<OwnedFd> {
    Ok(std::fs::File::open("/dev/null")?.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    /// Spawns `argv` with its stdout and stderr to a pipe, stdin from `stdin`; the pid, and
    /// the pipe's read end.
    fn start(argv: &[&CStr], vars: &[CString], dir: &CStr, stdin: BorrowedFd<'_>) -> io::Result<(Pid, std::fs::File)> {
        let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let base = BaseEnvironment::capture(|key| key == "DAGRUN_SPAWN_TEST");
        let pid = spawn(&Spawn {
            program: argv[0],
            argv,
            base: &base,
            vars,
            dir,
            stdio: [stdin, writer.as_fd(), writer.as_fd()],
        })?;
        Ok((pid, std::fs::File::from(reader)))
    }

    fn output_and_status(pid: Pid, mut out: std::fs::File) -> (String, i32) {
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        (text, reap(pid).unwrap().code().expect("exited"))
    }

    #[test]
    fn the_child_gets_its_arguments_directory_environment_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let dir_c = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        let null = dev_null().unwrap();
        let vars = [variable(b"DAGRUN_SPAWN_TEST", b"given").unwrap()];
        let script = c"pwd; echo \"$DAGRUN_SPAWN_TEST\" \"$1\"; echo oops >&2; exit 3";
        let (pid, out) = start(&[c"/bin/sh", c"-c", script, c"sh", c"second"], &vars, &dir_c, null.as_fd()).unwrap();
        let (text, code) = output_and_status(pid, out);
        let pwd = dir.path().canonicalize().unwrap();
        assert_eq!(text, format!("{}\ngiven second\noops\n", pwd.display()));
        assert_eq!(code, 3);
    }

    #[test]
    fn the_child_leads_a_group_of_its_own_with_no_signal_blocked_and_sigpipe_at_its_default() {
        // Rust ignores SIGPIPE in this process; block one more signal here, as a build's
        // threads may, to see that the child's mask is empty whatever the parent's.
        let (stdin_reader, stdin_writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        // `exec`: grep's own status is the child's mask and dispositions, inherited (a status
        // read from outside could catch `sh` blocking everything while it starts a command).
        let script = c"read line; exec grep -E '^Sig(Blk|Ign)' /proc/self/status";
        let (pid, out) = {
            // SAFETY: a valid set; the old mask is not asked for. Only this test's thread
            // blocks SIGUSR1, and only while it spawns.
            unsafe {
                let mut usr1 = std::mem::zeroed::<libc::sigset_t>();
                libc::sigemptyset(&mut usr1);
                libc::sigaddset(&mut usr1, libc::SIGUSR1);
                libc::pthread_sigmask(libc::SIG_BLOCK, &usr1, null_mut());
                let started = start(&[c"/bin/sh", c"-c", script], &[], c"/", stdin_reader.as_fd());
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &usr1, null_mut());
                started.unwrap()
            }
        };
        // Blocked in `read` until the pipe closes: its group is still there to look at.
        assert_eq!(rustix::process::getpgid(Some(pid)).unwrap(), pid);
        drop(stdin_writer);
        drop(stdin_reader);
        let (text, code) = output_and_status(pid, out);
        // What this process ignores, the child ignores too (as with std's `Command`), except
        // SIGPIPE, which Rust ignores for itself.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let ignored = status.lines().find_map(|line| line.strip_prefix("SigIgn:")).unwrap().trim();
        let ignored = u64::from_str_radix(ignored, 16).unwrap();
        assert_ne!(ignored & 1 << (libc::SIGPIPE - 1), 0, "Rust ignores SIGPIPE");
        let inherited = ignored & !(1 << (libc::SIGPIPE - 1));
        assert_eq!(text, format!("SigBlk:\t0000000000000000\nSigIgn:\t{inherited:016x}\n"));
        assert_eq!(code, 0);
    }

    #[test]
    fn the_base_environment_leaves_out_the_variables_a_stage_is_given() {
        let everything = BaseEnvironment::capture(|_| false);
        assert_eq!(everything.vars.len(), std::env::vars_os().count());
        let path = std::env::var_os("PATH").expect("PATH is set");
        assert!(everything.vars.contains(&variable(b"PATH", path.as_bytes()).unwrap()));
        let without_path = BaseEnvironment::capture(|key| key == "PATH");
        assert_eq!(without_path.vars.len(), everything.vars.len() - 1);
        assert!(!without_path.vars.iter().any(|var| var.as_bytes().starts_with(b"PATH=")));
    }

    #[test]
    fn the_child_may_run_on_every_core_its_parent_may() {
        let null = dev_null().unwrap();
        let script = c"grep '^Cpus_allowed_list:' /proc/self/status";
        let (pid, out) = start(&[c"/bin/sh", c"-c", script], &[], c"/", null.as_fd()).unwrap();
        let (text, code) = output_and_status(pid, out);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let ours = status.lines().find(|line| line.starts_with("Cpus_allowed_list:")).unwrap();
        assert_eq!(text, format!("{ours}\n"), "not held to the core it started on");
        assert_eq!(code, 0);
    }

    #[test]
    fn a_step_that_fails_in_the_child_is_the_error_returned() {
        let null = dev_null().unwrap();
        let missing = start(&[c"/no/such/program"], &[], c"/", null.as_fd()).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let no_dir = start(&[c"/bin/sh", c"-c", c"true"], &[], c"/no/such/dir", null.as_fd()).unwrap_err();
        assert_eq!(no_dir.kind(), io::ErrorKind::NotFound);
    }
}
