//! The live display, in a real pseudo-terminal (util-linux `script`), driven as a user
//! drives it: a Ctrl-C typed while a stage runs.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use crate::sandbox::{Sandbox, wait_until};

#[test]
fn ctrl_c_is_acknowledged_above_the_live_display_and_the_clock_runs() {
    if Command::new("script").arg("--version").output().is_err() {
        panic!("this test needs `script` (util-linux) to give dagrun a terminal; install util-linux");
    }
    let sb =
        Sandbox::new().pipeline("[stages.slow]\ncmd = \"touch started; sleep 30; echo > out\"\noutputs = [\"out\"]\n");
    // `script` runs the command through $SHELL -c; `exec` makes dagrun the terminal's
    // foreground process itself, so a shell that kills itself on SIGINT (dash does, and
    // CI's $SHELL may be unset, which means /bin/sh) cannot change the exit status.
    let mut child = Command::new("script")
        .args(["-qefc", &format!("exec {} build", env!("CARGO_BIN_EXE_dagrun")), "/dev/null"])
        .current_dir(sb.root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn script");
    wait_until("the stage to start", || sb.exists("started"));
    // Typed at the terminal: the line discipline sends SIGINT to dagrun.
    child.stdin.as_mut().unwrap().write_all(b"\x03").unwrap();
    let mut transcript = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut transcript).unwrap();
    let status = child.wait().unwrap();
    let text = String::from_utf8_lossy(&transcript);

    assert_eq!(status.code(), Some(1), "{text}");
    let message = "stopping: running stages get SIGTERM (press Ctrl-C again to kill them now)\r\n";
    let at = text.find(message).unwrap_or_else(|| panic!("no acknowledgement in {text:?}"));
    // Printed on a cleared line, not where the display's next refresh would draw over it.
    let before = &text[..at];
    assert!(
        before.ends_with("\x1b[2K") || before.ends_with("\x1b[1A"),
        "{:?}",
        &before[before.len().saturating_sub(60)..]
    );
    assert!(text.contains("stages done"), "{text:?}");
    assert!(!text.contains("0/0 stages done"), "no frame before the count is known: {text:?}");
    assert_eq!(sb.column("SELECT status FROM stage_runs WHERE component = 'slow'"), ["interrupted"]);
    // Said once: "last run was interrupted: its process group was killed".
    let why = sb.dagrun(&["why", "slow"]).success().stdout();
    assert!(why.contains("will run: last run was interrupted: its process group was killed"), "{why}");
}
