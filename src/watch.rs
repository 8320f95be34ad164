//! Waiting for a pipeline's source inputs (or its file) to change, for `agent --watch`.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::cancel::CancelToken;
use crate::engine::Engine;
use crate::error::Error;
use crate::spec::Input;

pub struct InputWatcher {
    watcher: RecommendedWatcher,
    events: Receiver<notify::Result<notify::Event>>,
    watched: Vec<PathBuf>,
    /// Paths whose changes are the pipeline's own doing: outputs and `.dagrun/`.
    ignored: Vec<PathBuf>,
}

impl InputWatcher {
    pub fn new() -> Result<InputWatcher, Error> {
        let (tx, events) = channel();
        let watcher = notify::recommended_watcher(tx).map_err(|e| Error::Watch { message: e.to_string() })?;
        Ok(InputWatcher { watcher, events, watched: Vec::new(), ignored: Vec::new() })
    }

    /// Watches the pipeline file and every source input of `engine` (a glob: its directory).
    pub fn watch(&mut self, engine: &Engine) -> Result<(), Error> {
        let spec = engine.spec();
        let mut paths = vec![spec.file.canonicalize().unwrap_or_else(|_| spec.file.clone())];
        for stage in &spec.stages {
            for input in &stage.inputs {
                let path = match input {
                    Input::Path(p) if engine.dag().producer_of(p).is_none() => p.to_path(&spec.root),
                    Input::Path(_) => continue,
                    Input::Glob(p) => {
                        let literal = p.as_str().split(['*', '?', '[']).next().unwrap_or("");
                        spec.root.join(literal.rsplit_once('/').map_or("", |(dir, _)| dir))
                    }
                };
                paths.push(path);
            }
        }
        self.ignored = spec.stages.iter().flat_map(|s| s.outputs.iter().map(|o| o.to_path(&spec.root))).collect();
        self.ignored.push(spec.dagrun_dir());
        for path in paths {
            if self.watched.contains(&path) || !path.exists() {
                continue;
            }
            self.watcher
                .watch(&path, RecursiveMode::Recursive)
                .map_err(|e| Error::Watch { message: format!("{}: {e}", path.display()) })?;
            self.watched.push(path);
        }
        Ok(())
    }

    /// Blocks until a watched path changes, then until changes have been quiet for
    /// `debounce`; returns early when the agent is asked to stop.
    pub fn wait_for_change(&mut self, debounce: Duration, cancel: &CancelToken) {
        let mut changed_at: Option<Instant> = None;
        while !cancel.is_stopping() {
            if changed_at.is_some_and(|at| at.elapsed() >= debounce) {
                return;
            }
            match self.events.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(event)) if self.is_relevant(&event) => changed_at = Some(Instant::now()),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn is_relevant(&self, event: &notify::Event) -> bool {
        let kind = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
        );
        kind && event.paths.iter().any(|p| !self.ignored.iter().any(|ignored| p.starts_with(ignored)))
    }
}
