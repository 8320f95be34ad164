//! `dagrun init`: a commented starter pipeline file that runs as written.

use std::path::Path;

use dagrun::Error;

use super::{EXIT_OK, EXIT_USAGE};

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Replace an existing pipeline file.
    #[arg(long)]
    force: bool,
}

/// Two stages that run on any machine with a POSIX shell: edit `data/input.txt` and build
/// again to see only what depends on it run.
const STARTER: &str = r#"# A dagrun pipeline. Each [stages.NAME] is one step; `dagrun build` runs the steps whose
# inputs, command or params changed since they last succeeded, and nothing else.
#   dagrun build            run what is out of date (independent stages in parallel)
#   dagrun status           what is up to date, and why anything is not
#   dagrun invalidate NAME  force a stage (and, with --downstream, what follows) to run again
# The state lives in .dagrun/state.db: plain SQLite, table orchestrator_state.

[pipeline]
name = "starter"
# jobs = 4                        # stages at once (default: the number of cores)

[stages.prepare]
# A shell command. ${inputs}, ${outputs} and ${params.KEY} are passed safely, never as shell.
cmd = "mkdir -p build && sort ${inputs} > ${outputs}"
inputs = ["data/input.txt"]       # files, directories or globs, hashed by content
outputs = ["build/sorted.txt"]    # what the stage writes; removed before it runs

[stages.summarise]
cmd = "head -n ${params.lines} ${inputs} > ${outputs}"
inputs = ["build/sorted.txt"]     # another stage's output: this makes the edge
outputs = ["build/summary.txt"]
params = { lines = 3 }            # part of the fingerprint: change it and the stage re-runs
# env = ["LANG"]                  # environment variables that matter to the stage
# retries = 1
# timeout_sec = 600
"#;

const STARTER_INPUT: &str = "pear\napple\nfig\nbanana\ncherry\n";

pub fn run(file: &Path, args: &InitArgs) -> Result<u8, Error> {
    if file.exists() && !args.force {
        eprintln!(
            "error: {} already exists; dagrun init never overwrites a pipeline file (pass --force to replace it)",
            file.display()
        );
        return Ok(EXIT_USAGE);
    }
    let write = |path: &Path, text: &str| -> Result<(), Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
        }
        std::fs::write(path, text).map_err(|e| Error::Io { path: path.display().to_string(), source: e })
    };
    write(file, STARTER)?;
    let input = file.parent().unwrap_or(Path::new(".")).join("data/input.txt");
    let wrote_input = !input.exists();
    if wrote_input {
        write(&input, STARTER_INPUT)?;
    }
    println!(
        "wrote {}{}",
        file.display(),
        if wrote_input { format!(" and {}", input.display()) } else { String::new() }
    );
    println!("next: `dagrun build`, then edit data/input.txt or `lines` and build again");
    Ok(EXIT_OK)
}
