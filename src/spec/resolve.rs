//! Declared paths with their symbolic links resolved: the one place in `spec` that reads more
//! than the pipeline file (the directories along each declared path, never their contents;
//! `validate.rs` uses [`resolve`] to compare `state` with the pipeline file).
//!
//! `path.rs` refuses `../x` lexically, but `out/victim.txt` still leaves the pipeline
//! directory when `out` links elsewhere, and outputs are deleted before their stage runs. So
//! an output written inside the directory must resolve inside it (even with
//! `allow_outside_paths`, which lets an output be *written* outside, in plain sight), and no
//! output may be or hold the pipeline file or the state database, or resolve into `.dagrun/`.
//! The executor asks [`ResolvedRoot::deletes_outside`] again before deleting. An input may resolve
//! outside only with `allow_outside_paths`, as it may be written outside only with it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use super::validate::Spans;
use super::{Diagnostic, Input, Spec};

/// `path` made absolute with every symbolic link in its existing part resolved, component by
/// component, so that `..` after a link leaves the link's target as the kernel would. The
/// part that does not exist yet (or lies behind a dangling link) is kept as written.
pub(super) fn resolve(path: &Path) -> PathBuf {
    Resolver::default().resolve(path)
}

/// Resolves paths, remembering every prefix it has resolved: a pipeline declares many paths
/// in a few directories, so checking them all costs about one `lstat` per directory and
/// per file, not a `readlink` per component of every path.
#[derive(Default)]
struct Resolver {
    /// Absolute path (no `.` or `..`) -> (resolved, whether it exists).
    known: RefCell<HashMap<PathBuf, (PathBuf, bool)>>,
}

impl Resolver {
    fn resolve(&self, path: &Path) -> PathBuf {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        if absolute.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
            return resolve_with_parents(&absolute);
        }
        self.real(&absolute).0
    }

    /// What deleting `path` acts on: its directory resolved, its own name kept (deleting a
    /// link removes the link, not what it points to).
    fn resolve_for_delete(&self, path: &Path) -> PathBuf {
        match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => self.resolve(dir).join(name),
            _ => self.resolve(path),
        }
    }

    /// An absolute path without `.` or `..`, resolved: its parent (remembered), then one
    /// `lstat` of its last component, following it only when it is a link.
    fn real(&self, path: &Path) -> (PathBuf, bool) {
        if let Some(known) = self.known.borrow().get(path) {
            return known.clone();
        }
        let real = match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => {
                let (dir, exists) = self.real(parent);
                let joined = dir.join(name);
                match exists.then(|| std::fs::symlink_metadata(&joined)) {
                    Some(Ok(meta)) if meta.file_type().is_symlink() => match std::fs::canonicalize(&joined) {
                        Ok(target) => (target, true),
                        Err(_) => (joined, false), // a dangling link
                    },
                    Some(Ok(_)) => (joined, true),
                    Some(Err(_)) | None => (joined, false),
                }
            }
            _ => (path.to_path_buf(), true), // the root directory
        };
        self.known.borrow_mut().insert(path.to_path_buf(), real.clone());
        real
    }
}

/// [`resolve`] for a path with `..` in it: each existing prefix canonicalized in turn.
fn resolve_with_parents(absolute: &Path) -> PathBuf {
    let mut resolved = PathBuf::new();
    let mut exists = true;
    for component in absolute.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => resolved.push(component),
            Component::CurDir => {}
            Component::ParentDir => {
                // `resolved` has no links while it exists, so its parent is the real one.
                resolved.pop();
            }
            Component::Normal(name) => {
                resolved.push(name);
                if exists {
                    match std::fs::canonicalize(&resolved) {
                        Ok(real) => resolved = real,
                        Err(_) => exists = false,
                    }
                }
            }
        }
    }
    resolved
}

/// What deleting `path` acts on: its directory resolved, its own name kept.
#[cfg(test)]
fn resolve_for_delete(path: &Path) -> PathBuf {
    Resolver::default().resolve_for_delete(path)
}

/// Where deleting the output `path` would act, when that is outside the directory `root`.
#[cfg(test)]
fn deletes_outside(root: &Path, path: &Path) -> Option<PathBuf> {
    ResolvedRoot::new(root).deletes_outside(path)
}

/// The pipeline directory resolved once, for the executor's look before it deletes each
/// output: what lies above the directory is not looked at again for every stage, what lies
/// within it is (an earlier stage may have made a directory there a link).
#[derive(Debug)]
pub(crate) struct ResolvedRoot {
    absolute: PathBuf,
    real: PathBuf,
}

impl ResolvedRoot {
    pub(crate) fn new(root: &Path) -> ResolvedRoot {
        let absolute = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        ResolvedRoot { real: Resolver::default().resolve(&absolute), absolute }
    }

    /// Where deleting the output `path` would act, when that is outside the directory.
    pub(crate) fn deletes_outside(&self, path: &Path) -> Option<PathBuf> {
        let resolver = Resolver::default();
        resolver.known.borrow_mut().insert(self.absolute.clone(), (self.real.clone(), true));
        let target = resolver.resolve_for_delete(path);
        (!within(&target, &self.real)).then_some(target)
    }
}

/// `path` is `dir` or lies inside it: `Path::starts_with` on the bytes, as both are
/// absolute and free of `.` and `..` (much cheaper than comparing component by component).
fn within(path: &Path, dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (path, dir) = (path.as_os_str().as_bytes(), dir.as_os_str().as_bytes());
    let dir = dir.strip_suffix(b"/").unwrap_or(dir);
    path.starts_with(dir) && matches!(path.get(dir.len()), None | Some(b'/'))
}

/// A file no output may be or hold: how messages name it, and the paths an output must not
/// reach (the file as located, and its target when it is a link).
struct Protected {
    what: String,
    paths: [PathBuf; 2],
}

impl Protected {
    fn new(resolver: &Resolver, what: String, path: &Path) -> Protected {
        Protected { what, paths: [resolver.resolve_for_delete(path), resolver.resolve(path)] }
    }
}

/// Checks a validated pipeline's declared paths against the filesystem as it is now;
/// `spans` (from validation, when there are any: not for a spec from the cache) place each
/// path in the file.
pub(super) fn check_resolved<'s>(spec: &'s Spec, spans: Option<&[Spans]>) -> Vec<Diagnostic> {
    let resolver = Resolver::default();
    let root = resolver.resolve(&spec.root);
    let dagrun_dir = resolver.resolve(&spec.dagrun_dir());
    let file = spec.root.join(spec.file.file_name().unwrap_or_default());
    let protected = [
        Protected::new(&resolver, format!("the pipeline file `{}`", spec.file.display()), &file),
        Protected::new(&resolver, format!("the state database `{}`", spec.state_path.display()), &spec.state_path),
    ];
    let outputs: std::collections::HashSet<&str> =
        spec.stages.iter().flat_map(|stage| stage.outputs.iter().map(|o| o.as_str())).collect();
    // Most pipelines write thousands of outputs into a few directories: a directory found
    // clear answers for every name in it, with no path built per output.
    let special: Vec<&Path> =
        protected.iter().flat_map(|p| p.paths.iter().map(PathBuf::as_path)).chain([dagrun_dir.as_path()]).collect();
    let mut clear_dirs: HashMap<String, bool> = HashMap::new();
    // Stages declared side by side mostly write into the same directory: the last answer is
    // asked first, before the map.
    let mut last: Option<(&str, bool)> = None;
    let mut in_clear_dir = |rel: &'s crate::spec::RelPath| -> bool {
        if rel.is_outside() {
            return false;
        }
        let dir = rel.as_str().rsplit_once('/').map_or("", |(dir, _)| dir);
        if let Some((last_dir, clear)) = last
            && last_dir == dir
        {
            return clear;
        }
        let clear = match clear_dirs.get(dir) {
            Some(&clear) => clear,
            None => {
                let resolved = resolver.resolve(&spec.root.join(dir));
                let clear =
                    within(&resolved, &root) && !special.iter().any(|s| within(s, &resolved) || within(&resolved, s));
                clear_dirs.insert(dir.to_string(), clear);
                clear
            }
        };
        last = Some((dir, clear));
        clear
    };
    let mut diags = Vec::new();
    for (s, stage) in spec.stages.iter().enumerate() {
        let name = &stage.name;
        let spans = spans.map(|spans| &spans[s]);
        for (o, rel) in stage.outputs.iter().enumerate() {
            if in_clear_dir(rel) {
                continue;
            }
            let target = resolver.resolve_for_delete(&rel.to_path(&spec.root));
            let elsewhere = "outputs are deleted before their stage runs; write the stage's output elsewhere";
            let (message, help) = if let Some(victim) =
                protected.iter().find(|p| p.paths.iter().any(|v| within(v, &target)))
            {
                let verb = if victim.paths.contains(&target) { "is" } else { "holds" };
                (format!("output `{rel}` of stage `{name}` {verb} {}", victim.what), elsewhere)
            } else if within(&target, &dagrun_dir) {
                let message = format!(
                    "output `{rel}` of stage `{name}` resolves into dagrun's own `.dagrun/` directory, through a symbolic link"
                );
                (message, elsewhere)
            } else if !rel.is_outside() && !within(&target, &root) {
                let message = format!(
                    "output `{rel}` of stage `{name}` resolves to `{}`, outside the pipeline directory, through a symbolic link",
                    target.display()
                );
                (
                    message,
                    "outputs are deleted before their stage runs; replace the link with a directory, or write the real path (with `allow_outside_paths = true`)",
                )
            } else {
                continue;
            };
            diags.push(Diagnostic::new(message, spans.map(|spans| spans.outputs[o].clone())).help(help));
        }
        if spec.allow_outside_paths {
            continue;
        }
        for (n, input) in stage.inputs.iter().enumerate() {
            // A glob is resolved through the literal directory it starts in; another stage's
            // output through its directory (it is checked as that stage's output).
            let target = match input {
                Input::Glob(glob) => resolver.resolve(&spec.root.join(glob.base())),
                Input::Path(path) if outputs.contains(path.as_str()) => {
                    if in_clear_dir(path) {
                        continue;
                    }
                    resolver.resolve_for_delete(&path.to_path(&spec.root))
                }
                Input::Path(path) => resolver.resolve(&path.to_path(&spec.root)),
            };
            if !within(&target, &root) {
                let message = format!(
                    "input `{}` of stage `{name}` resolves to `{}`, outside the pipeline directory, through a symbolic link",
                    input.as_rel(),
                    target.display()
                );
                diags.push(Diagnostic::new(message, spans.map(|spans| spans.inputs[n].clone())).help(
                    "set `allow_outside_paths = true` in [pipeline] to read files outside the pipeline directory",
                ));
            }
        }
    }
    diags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_follows_links_and_keeps_the_missing_rest_as_written() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let real_outside = std::fs::canonicalize(outside.path()).unwrap();
        let real_root = std::fs::canonicalize(root.path()).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        assert_eq!(resolve(&root.path().join("link/not/yet")), real_outside.join("not/yet"));
        assert_eq!(resolve(&root.path().join("link/..")), real_outside.parent().unwrap());
        assert_eq!(resolve(&root.path().join("new/../x")), real_root.join("x"));
        assert_eq!(resolve_for_delete(&root.path().join("link")), real_root.join("link"), "a link is deleted itself");
        assert_eq!(deletes_outside(root.path(), &root.path().join("link/v.txt")), Some(real_outside.join("v.txt")));
        assert_eq!(deletes_outside(root.path(), &root.path().join("link")), None);
    }
}
