//! Declared paths with their symbolic links resolved: the one place in `spec` that reads more
//! than the pipeline file (the directories along each declared path, never their contents;
//! `validate.rs` uses [`resolve`] to compare `state` with the pipeline file).
//!
//! `path.rs` refuses `../x` lexically, but `out/victim.txt` still leaves the pipeline
//! directory when `out` links elsewhere, and outputs are deleted before their stage runs. So
//! an output written inside the directory must resolve inside it (even with
//! `allow_outside_paths`, which lets an output be *written* outside, in plain sight), and no
//! output may be or hold the pipeline file or the state database, or resolve into `.dagrun/`.
//! The executor asks [`deletes_outside`] again before deleting. An input may resolve
//! outside only with `allow_outside_paths`, as it may be written outside only with it.

use std::path::{Component, Path, PathBuf};

use toml::Spanned;

use super::raw::RawFile;
use super::{Diagnostic, GlobPattern, RelPath, Spec, is_glob, normalize_with};

/// `path` made absolute with every symbolic link in its existing part resolved, component by
/// component, so that `..` after a link leaves the link's target as the kernel would. The
/// part that does not exist yet (or lies behind a dangling link) is kept as written.
pub(super) fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
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

/// What deleting `path` acts on: its directory resolved, its own name kept (deleting a link
/// removes the link, not what it points to).
fn resolve_for_delete(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => resolve(dir).join(name),
        _ => resolve(path),
    }
}

/// Where deleting the output `path` would act, when that is outside the directory `root`.
pub(crate) fn deletes_outside(root: &Path, path: &Path) -> Option<PathBuf> {
    let target = resolve_for_delete(path);
    (!target.starts_with(resolve(root))).then_some(target)
}

/// A file no output may be or hold: how messages name it, and the paths an output must not
/// reach (the file as located, and its target when it is a link).
struct Protected {
    what: String,
    paths: [PathBuf; 2],
}

impl Protected {
    fn new(what: String, path: &Path) -> Protected {
        Protected { what, paths: [resolve_for_delete(path), resolve(path)] }
    }
}

/// Checks a validated pipeline's declared paths against the filesystem as it is now.
/// `text` is the pipeline file the spec came from, parsed again here for the spans.
pub(super) fn check_resolved(spec: &Spec, text: &str) -> Vec<Diagnostic> {
    let Ok(raw) = toml::from_str::<RawFile>(text) else { return Vec::new() };
    let allow_outside = raw.pipeline.allow_outside_paths;
    let root = resolve(&spec.root);
    let dagrun_dir = resolve(&spec.dagrun_dir());
    let file = spec.root.join(spec.file.file_name().unwrap_or_default());
    let protected = [
        Protected::new(format!("the pipeline file `{}`", spec.file.display()), &file),
        Protected::new(format!("the state database `{}`", spec.state_path.display()), &spec.state_path),
    ];
    let mut diags = Vec::new();
    for (name, stage) in &raw.stages {
        let name = name.get_ref();
        for output in &stage.outputs {
            let Some((rel, path)) = declared(spec, output, allow_outside) else { continue };
            let target = resolve_for_delete(&path);
            let elsewhere = "outputs are deleted before their stage runs; write the stage's output elsewhere";
            let (message, help) = if let Some(victim) =
                protected.iter().find(|p| p.paths.iter().any(|v| v.starts_with(&target)))
            {
                let verb = if victim.paths.contains(&target) { "is" } else { "holds" };
                (format!("output `{rel}` of stage `{name}` {verb} {}", victim.what), elsewhere)
            } else if target.starts_with(&dagrun_dir) {
                let message = format!(
                    "output `{rel}` of stage `{name}` resolves into dagrun's own `.dagrun/` directory, through a symbolic link"
                );
                (message, elsewhere)
            } else if !rel.is_outside() && !target.starts_with(&root) {
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
            diags.push(Diagnostic::new(message, Some(output.span())).help(help));
        }
        if allow_outside {
            continue;
        }
        for input in &stage.inputs {
            let Some((rel, path)) = declared(spec, input, false) else { continue };
            // A glob is resolved through the literal directory it starts in.
            let start = match is_glob(input.get_ref()).then(|| GlobPattern::new(rel.clone())) {
                Some(Ok(glob)) => spec.root.join(glob.base()),
                Some(Err(_)) => continue,
                None => path,
            };
            let target = resolve(&start);
            if !target.starts_with(&root) {
                let message = format!(
                    "input `{rel}` of stage `{name}` resolves to `{}`, outside the pipeline directory, through a symbolic link",
                    target.display()
                );
                diags.push(Diagnostic::new(message, Some(input.span())).help(
                    "set `allow_outside_paths = true` in [pipeline] to read files outside the pipeline directory",
                ));
            }
        }
    }
    diags
}

/// A declared path as validation normalised it, and where it is on disk.
fn declared(spec: &Spec, raw: &Spanned<String>, allow_outside: bool) -> Option<(RelPath, PathBuf)> {
    let rel = normalize_with(&spec.root, raw.get_ref(), allow_outside).ok()?;
    let path = rel.to_path(&spec.root);
    Some((rel, path))
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
