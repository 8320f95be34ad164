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
    /// The source inputs and the pipeline file: a change at or under one starts a cycle.
    interesting: Vec<PathBuf>,
    /// Paths whose changes are the pipeline's own doing: outputs and `.dagrun/`.
    ignored: Vec<PathBuf>,
}

impl InputWatcher {
    pub fn new() -> Result<InputWatcher, Error> {
        let (tx, events) = channel();
        let watcher = notify::recommended_watcher(tx).map_err(|e| Error::Watch { message: e.to_string() })?;
        Ok(InputWatcher { watcher, events, watched: Vec::new(), interesting: Vec::new(), ignored: Vec::new() })
    }

    /// Watches the pipeline file and every source input of `engine` (a glob: its directory).
    /// Files are watched through their directory, so a save that replaces the file (as most
    /// editors do: write a new file, rename it over the old) is still seen.
    pub fn watch(&mut self, engine: &Engine) -> Result<(), Error> {
        let spec = engine.spec();
        let root = &spec.root;
        let mut interesting = vec![root.join(spec.file.file_name().unwrap_or_default())];
        for stage in &spec.stages {
            for input in &stage.inputs {
                match input {
                    Input::Path(p) if engine.dag().producer_of(p).is_none() => interesting.push(p.to_path(root)),
                    Input::Path(_) => {}
                    Input::Glob(p) => {
                        let literal = p.as_str().split(['*', '?', '[']).next().unwrap_or("");
                        interesting.push(root.join(literal.rsplit_once('/').map_or("", |(dir, _)| dir)));
                    }
                }
            }
        }
        self.ignored = spec.stages.iter().flat_map(|s| s.outputs.iter().map(|o| o.to_path(root))).collect();
        self.ignored.push(spec.dagrun_dir());
        for path in &interesting {
            // A directory is watched whole; a file (or a path not there yet) through its parent.
            let (target, mode) = if path.is_dir() {
                (path.clone(), RecursiveMode::Recursive)
            } else {
                (path.parent().map_or_else(|| root.clone(), std::path::Path::to_path_buf), RecursiveMode::NonRecursive)
            };
            if self.watched.contains(&target) || !target.exists() {
                continue;
            }
            self.watcher
                .watch(&target, mode)
                .map_err(|e| Error::Watch { message: format!("{}: {e}", target.display()) })?;
            self.watched.push(target);
        }
        self.interesting = interesting;
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
        kind && event.paths.iter().any(|p| {
            self.interesting.iter().any(|i| p.starts_with(i))
                && !self.ignored.iter().any(|ignored| p.starts_with(ignored))
        })
    }
}
