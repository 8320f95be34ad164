//! Waiting for a pipeline's source inputs (or its file) to change, for `agent --watch`, and
//! noting every change meanwhile, outputs' included, for the next cycle's plan.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::cancel::CancelToken;
use crate::engine::Engine;
use crate::error::Error;
use crate::spec::{GlobPattern, Input};

/// Paths and globs a change may concern, checked in time that does not grow with their
/// number: a path by looking up each of the changed path's ancestors, the globs (few) one by
/// one. At 100,000 stages a list cost milliseconds per event, and a cycle's own outputs
/// make thousands of events.
#[derive(Default)]
struct Interests {
    /// Files, or anything under a directory.
    paths: HashSet<PathBuf>,
    /// Glob inputs, each with the directory it is relative to: a path matching one, or
    /// inside a directory that does.
    globs: Vec<(PathBuf, GlobPattern)>,
}

impl Interests {
    fn push_path(&mut self, path: PathBuf) {
        self.paths.insert(path);
    }

    fn push_glob(&mut self, root: &Path, glob: &GlobPattern) {
        self.globs.push((root.to_path_buf(), glob.clone()));
    }

    /// Whether `path` is one of them, or under one.
    fn covers(&self, path: &Path) -> bool {
        path.ancestors().any(|a| self.paths.contains(a))
            || self.globs.iter().any(|(root, glob)| {
                let rel = path.strip_prefix(root).ok().and_then(Path::to_str).unwrap_or_default();
                !rel.is_empty() && glob.covers(rel)
            })
    }
}

/// What changed since the last cycle.
#[derive(Debug, Default)]
pub struct Changes {
    /// Absolute paths of watched files that changed.
    pub paths: HashSet<PathBuf>,
    /// Watch afresh and plan everything: events were lost, or a directory was made,
    /// removed or renamed (a watch may be gone, or missing where a path will appear).
    pub rescan: bool,
}

impl Changes {
    /// Whether one of the changed paths is a symbolic link now: a link made or re-pointed,
    /// which can change where a declared path resolves. (A file edited cannot.)
    pub fn made_a_link(&self) -> bool {
        self.paths.iter().any(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()))
    }
}

/// The longest a burst of changes is waited out before a cycle starts anyway.
const MAX_SETTLE: Duration = Duration::from_millis(300);

/// How long changes are waited out once the burst is a whole save (`Burst::is_whole`): only
/// the files saved with it are still to come.
const SETTLE_WHEN_WHOLE: Duration = Duration::from_millis(1);

/// What the events of the burst being waited out say about it.
#[derive(Default)]
struct Burst {
    /// Watched files written that their writer has not closed yet.
    open_for_writing: HashSet<PathBuf>,
    /// A watched file was written, then closed.
    closed_a_write: bool,
    /// Something else happened to a watched path: a file removed or renamed (a checkout
    /// removes, then makes; an editor may rename the old file away, then write a new one),
    /// a directory made, or events lost. A path may be missing until a later event.
    unsettled: bool,
}

impl Burst {
    /// Whether every change so far is a file written in place and closed: the save is whole.
    fn is_whole(&self) -> bool {
        self.closed_a_write && !self.unsettled && self.open_for_writing.is_empty()
    }
}

pub struct InputWatcher {
    watcher: RecommendedWatcher,
    events: Receiver<notify::Result<notify::Event>>,
    watched: HashMap<PathBuf, RecursiveMode>,
    /// Each watched directory and every directory above it: what a removal or rename at
    /// one of them takes away.
    above_watched: HashSet<PathBuf>,
    interesting: Interests,
    /// What the stages themselves are read from: the pipeline file, params and vars files,
    /// and where templates list their files.
    pipeline: Interests,
    /// The stages' outputs: changes there start no cycle.
    outputs: Interests,
    /// dagrun's own files: `.dagrun/` and the state database.
    dagrun_files: Vec<PathBuf>,
    /// The burst being waited out (and what `take_pending` adds after it).
    burst: Burst,
}

impl InputWatcher {
    /// Starts watching the pipeline file (through its directory), so that even a pipeline
    /// that does not load yet is retried when it is edited.
    pub fn new(pipeline_file: &Path) -> Result<InputWatcher, Error> {
        let (tx, events) = channel();
        let watcher = notify::recommended_watcher(tx).map_err(|e| Error::Watch { message: e.to_string() })?;
        let file = std::path::absolute(pipeline_file).unwrap_or_else(|_| pipeline_file.to_path_buf());
        let mut watcher = InputWatcher {
            watcher,
            events,
            watched: HashMap::new(),
            above_watched: HashSet::new(),
            interesting: Interests::default(),
            pipeline: Interests::default(),
            outputs: Interests::default(),
            dagrun_files: Vec::new(),
            burst: Burst::default(),
        };
        watcher.add(file.parent().unwrap_or(Path::new("/")), RecursiveMode::NonRecursive)?;
        watcher.interesting.push_path(file.clone());
        watcher.pipeline.push_path(file);
        Ok(watcher)
    }

    /// Watches, afresh, every source input and output of `engine`, its pipeline file and
    /// what its stages were read from, and the directories between the pipeline's and a
    /// watched one. Files are watched through their directory, so a save that replaces the
    /// file (as most editors do) is seen; directories and globs recursively.
    pub fn watch(&mut self, engine: &Engine) -> Result<(), Error> {
        let spec = engine.spec();
        let root = &spec.root;
        // Afresh: a directory removed and made again since is a new one, whose old watch
        // died with the old one.
        for dir in std::mem::take(&mut self.watched).into_keys() {
            let _ = self.watcher.unwatch(&dir);
        }
        self.above_watched.clear();
        let file = root.join(spec.file.file_name().unwrap_or_default());
        self.add(root, RecursiveMode::NonRecursive)?;
        self.interesting = Interests::default();
        self.interesting.push_path(file.clone());
        self.pipeline = Interests::default();
        self.pipeline.push_path(file);
        // What the stages were read from besides the pipeline file.
        for file in &spec.read_files {
            let path = root.join(file);
            if let Some(dir) = path.parent() {
                self.add_nearest(dir)?;
            }
            self.interesting.push_path(path.clone());
            self.pipeline.push_path(path);
        }
        for glob in &spec.listed {
            self.watch_glob(root, glob)?;
            self.pipeline.push_glob(root, glob);
        }
        for stage in &spec.stages {
            for input in &stage.inputs {
                match input {
                    Input::Path(p) if engine.dag().producer_of(p).is_none() => {
                        let path = p.to_path(root);
                        if path.is_dir() {
                            self.add(&path, RecursiveMode::Recursive)?;
                        } else if let Some(dir) = path.parent() {
                            self.add_nearest(dir)?;
                        }
                        self.interesting.push_path(path);
                    }
                    Input::Path(_) => {}
                    Input::Glob(glob) => self.watch_glob(root, glob)?,
                }
            }
        }
        // Outputs are watched too, though a change to one starts no cycle: the next cycle's
        // plan must look at a stage whose output someone edited or deleted.
        self.outputs = Interests::default();
        for stage in &spec.stages {
            for output in &stage.outputs {
                let path = output.to_path(root);
                if stage.output_dirs.contains(output) && path.is_dir() {
                    self.add(&path, RecursiveMode::Recursive)?;
                } else if let Some(dir) = path.parent() {
                    self.add_nearest(dir)?;
                }
                self.outputs.push_path(path);
            }
        }
        // Every directory between the pipeline's and a watched one, so that renaming or
        // replacing one (`mv data.new data`) is seen.
        let inside = |dir: &Path| crate::spec::relative_inside(dir, root).is_some();
        let between: std::collections::HashSet<PathBuf> = self
            .watched
            .keys()
            .filter(|dir| inside(dir))
            .flat_map(|dir| dir.ancestors().skip(1).take_while(|a| inside(a)).map(Path::to_path_buf))
            .collect();
        for dir in between {
            self.add(&dir, RecursiveMode::NonRecursive)?;
        }
        self.dagrun_files = vec![spec.dagrun_dir()];
        for suffix in ["", "-wal", "-shm", "-journal"] {
            self.dagrun_files.push(PathBuf::from(format!("{}{suffix}", spec.state_path.display())));
        }
        Ok(())
    }

    /// Watches `dir`, or, while it does not exist, the nearest directory above it that does:
    /// its making is then seen (and starts a rescan, which watches it).
    fn add_nearest(&mut self, dir: &Path) -> Result<(), Error> {
        match dir.ancestors().find(|d| d.is_dir()) {
            Some(existing) => self.add(existing, RecursiveMode::NonRecursive),
            None => Ok(()),
        }
    }

    fn watch_glob(&mut self, root: &Path, glob: &GlobPattern) -> Result<(), Error> {
        let dir = root.join(glob.base());
        if dir.is_dir() {
            self.add(&dir, RecursiveMode::Recursive)?;
        } else {
            self.add_nearest(&dir)?;
        }
        self.interesting.push_glob(root, glob);
        Ok(())
    }

    /// Watches `dir`, upgrading an earlier non-recursive watch when recursion is needed.
    fn add(&mut self, dir: &Path, mode: RecursiveMode) -> Result<(), Error> {
        match self.watched.get(dir) {
            Some(RecursiveMode::Recursive) => return Ok(()),
            Some(RecursiveMode::NonRecursive) if mode == RecursiveMode::NonRecursive => return Ok(()),
            Some(RecursiveMode::NonRecursive) => {
                let _ = self.watcher.unwatch(dir);
            }
            None => {}
        }
        self.watcher.watch(dir, mode).map_err(|e| Error::Watch { message: format!("{}: {e}", dir.display()) })?;
        self.watched.insert(dir.to_path_buf(), mode);
        for above in dir.ancestors() {
            if !self.above_watched.insert(above.to_path_buf()) {
                break; // and so is everything above it
            }
        }
        Ok(())
    }

    /// Blocks until a watched path changes, then until changes have been quiet for `settle`
    /// (an editor's save is several events within a millisecond or two), or for
    /// `SETTLE_WHEN_WHOLE` once the burst is files written in place and closed, at most
    /// `MAX_SETTLE` in all; returns what changed. Returns early, with what it has, when the
    /// agent is asked to stop.
    pub fn wait_for_change(&mut self, settle: Duration, cancel: &CancelToken) -> Changes {
        let mut changes = Changes::default();
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        self.burst = Burst::default();
        while !cancel.is_stopping() {
            let wait = match first {
                None => Duration::from_millis(50),
                Some(first) => {
                    let now = Instant::now();
                    let quiet = if self.burst.is_whole() { settle.min(SETTLE_WHEN_WHOLE) } else { settle };
                    if now.duration_since(last) >= quiet || now.duration_since(first) >= MAX_SETTLE {
                        return changes;
                    }
                    quiet.saturating_sub(now.duration_since(last)).max(Duration::from_micros(100))
                }
            };
            match self.events.recv_timeout(wait) {
                Ok(event) => {
                    if self.note(event, &mut changes) {
                        last = Instant::now();
                        first.get_or_insert(last);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return changes,
            }
        }
        changes
    }

    /// Adds what arrived since `wait_for_change` returned: changes made just before a
    /// cycle plans belong in its plan.
    pub fn take_pending(&mut self, changes: &mut Changes) {
        while let Ok(event) = self.events.try_recv() {
            self.note(event, changes);
        }
    }

    /// Adds an event to `changes`; returns whether it starts a cycle.
    fn note(&mut self, event: notify::Result<notify::Event>, changes: &mut Changes) -> bool {
        let Ok(event) = event else {
            // The watcher lost events (its queue overflowed): anything may have changed.
            changes.rescan = true;
            self.burst.unsettled = true;
            return true;
        };
        let starts_cycle = event.need_rescan() || self.is_relevant(&event);
        match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                for path in &event.paths {
                    self.burst.closed_a_write |= self.burst.open_for_writing.remove(path);
                }
            }
            EventKind::Create(CreateKind::File | CreateKind::Any)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
                if starts_cycle =>
            {
                self.burst.open_for_writing.extend(event.paths.iter().cloned());
            }
            _ if starts_cycle => self.burst.unsettled = true,
            _ => {}
        }
        // A directory made, removed or renamed: a watch may be gone, or one missing where a
        // declared path will appear. The next cycle watches and plans afresh.
        changes.rescan |= event.need_rescan() || self.moves_a_directory(&event);
        // Every change is kept, outputs' included (they start no cycle, but the next plan
        // must look at their stages), except dagrun's own files. A file opened or read
        // changes nothing (`dagrun status` reads the pipeline file).
        if !matches!(event.kind, EventKind::Access(_)) {
            changes.paths.extend(event.paths.into_iter().filter(|p| !self.is_dagrun_file(p)));
        }
        starts_cycle
    }

    /// Whether `changes` may change the stages themselves: the pipeline file, a params or
    /// vars file, a file appearing where a template lists its files, or events lost.
    pub fn touches_pipeline(&self, changes: &Changes) -> bool {
        changes.rescan || changes.paths.iter().any(|p| self.pipeline.covers(p))
    }

    fn is_relevant(&self, event: &notify::Event) -> bool {
        let kind = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
        );
        kind && event.paths.iter().any(|p| self.interesting.covers(p) && !self.is_own(p))
    }

    fn moves_a_directory(&self, event: &notify::Event) -> bool {
        use notify::event::RemoveKind;
        match event.kind {
            EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder) => true,
            // A watched directory, or one above it, removed or renamed.
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => {
                event.paths.iter().any(|p| self.above_watched.contains(p))
            }
            _ => false,
        }
    }

    /// `.dagrun/`, the state database and its journals, and built-ins' temporary files.
    fn is_dagrun_file(&self, path: &Path) -> bool {
        let temp = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"));
        temp || self.dagrun_files.iter().any(|own| path.starts_with(own))
    }

    /// Changes the pipeline makes itself: outputs, and dagrun's own files.
    fn is_own(&self, path: &Path) -> bool {
        self.is_dagrun_file(path) || self.outputs.covers(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, RemoveKind};

    fn event(kind: EventKind, path: &Path) -> notify::Result<notify::Event> {
        Ok(notify::Event::new(kind).add_path(path.to_path_buf()))
    }

    /// Only files written in place and closed make a whole save (the short wait); a file
    /// still open, a removal or rename before, or a close alone leave the full wait.
    #[test]
    fn a_burst_is_whole_only_when_every_change_is_a_closed_write() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pipeline.toml");
        std::fs::write(&file, "").unwrap();
        let mut watcher = InputWatcher::new(&file).unwrap();
        let mut changes = Changes::default();
        let written = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));

        watcher.burst = Burst::default();
        assert!(watcher.note(event(written, &file), &mut changes));
        assert!(!watcher.burst.is_whole(), "still open");
        watcher.note(event(closed, &file), &mut changes);
        assert!(watcher.burst.is_whole());

        watcher.burst = Burst::default();
        watcher.note(event(EventKind::Remove(RemoveKind::File), &file), &mut changes);
        watcher.note(event(EventKind::Create(CreateKind::File), &file), &mut changes);
        watcher.note(event(written, &file), &mut changes);
        watcher.note(event(closed, &file), &mut changes);
        assert!(!watcher.burst.is_whole(), "removed first: a checkout may remove more");

        watcher.burst = Burst::default();
        watcher.note(event(closed, &file), &mut changes);
        assert!(!watcher.burst.is_whole(), "closed, never written in this burst");
    }
}
