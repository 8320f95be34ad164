//! `dagrun serve`: the web dashboard for the pipeline in this directory.

use std::net::SocketAddr;
use std::time::Duration;

use dagrun::dashboard::{ServeOptions, serve};
use dagrun::{CancelToken, Error};

use super::{EXIT_OK, registry};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Where to listen. Anything but loopback needs --token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8501")]
    addr: SocketAddr,
    /// Also run a cycle every N seconds, as `dagrun agent --mode scheduled` does.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    interval_sec: Option<u64>,
    /// Also run a cycle now and whenever a source input or the pipeline file changes, as
    /// `dagrun agent --watch` does.
    #[arg(long, conflicts_with = "interval_sec")]
    watch: bool,
    /// Require this token of every request (`Authorization: Bearer T`, or open the page once
    /// with `?token=T`). Required to listen on anything but loopback.
    #[arg(long, value_name = "T", env = "DAGRUN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// On SIGINT/SIGTERM, seconds to let a running build's stages finish before killing them.
    #[arg(long, value_name = "N", default_value_t = 30)]
    grace_sec: u64,
}

pub fn run(file: std::path::PathBuf, args: ServeArgs) -> Result<u8, Error> {
    let cancel = CancelToken::new();
    let state_path = dagrun::Engine::load(&file, registry()).map(|engine| engine.spec().state_path.clone());
    stop_on_signals(&cancel, Duration::from_secs(args.grace_sec), state_path.unwrap_or_default());
    let opts = ServeOptions {
        file,
        registry: registry(),
        addr: args.addr,
        token: args.token.filter(|t| !t.is_empty()),
        interval: args.interval_sec.map(Duration::from_secs),
        watch: args.watch,
        cancel,
    };
    serve(opts, |addr| {
        use std::io::Write;
        // The first line says where: scripts (and the tests) read it.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "serving http://{addr} (Ctrl-C to stop)");
        let _ = out.flush();
    })?;
    super::signals::note("dashboard stopped");
    Ok(EXIT_OK)
}

/// First SIGINT/SIGTERM/SIGHUP: stop answering and let a running build's stages finish for
/// up to `grace`, then terminate them; a second: kill them at once; a third: exit.
fn stop_on_signals(cancel: &CancelToken, grace: Duration, state_path: std::path::PathBuf) {
    super::signals::on_stop_signals(
        cancel,
        move |cancel| {
            cancel.drain();
            super::signals::note("stopping: no new builds; a running one gets its grace period");
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(grace);
                cancel.cancel();
            });
        },
        super::signals::exit_now(state_path),
    );
}
