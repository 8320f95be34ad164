//! Pipeline-relative paths: lexically normalised, `/`-separated, never escaping the root.

use std::fmt;
use std::path::Path;

/// A path relative to the pipeline directory, normalised so that `./a/b`, `a//b/` and
/// `a/c/../b` are all `a/b`. Comparing two `RelPath`s compares the files they name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct RelPath(String);

impl RelPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `true` when `self` is `other` or lies inside the directory `other`.
    pub fn is_within(&self, other: &RelPath) -> bool {
        self.0 == other.0 || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// The path's ancestors, nearest first, excluding itself: `a/b/c` gives `a/b`, `a`.
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        let s = self.0.as_str();
        s.char_indices().rev().filter(|&(_, c)| c == '/').map(move |(i, _)| &s[..i])
    }

    /// Wraps a string already in normal form (as produced by [`normalize`]); `None` if empty.
    pub fn parse_normalized(text: &str) -> Option<RelPath> {
        (!text.is_empty()).then(|| RelPath(text.to_string()))
    }

    pub fn is_glob(&self) -> bool {
        is_glob(&self.0)
    }

    /// Whether the path was written outside the pipeline directory (`../x` or absolute),
    /// which only `allow_outside_paths = true` accepts.
    pub fn is_outside(&self) -> bool {
        self.0.starts_with('/') || self.0 == ".." || self.0.starts_with("../")
    }

    pub fn to_path(&self, root: &Path) -> std::path::PathBuf {
        root.join(&self.0)
    }
}

impl AsRef<str> for RelPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a declared path is a glob pattern rather than a literal path.
pub fn is_glob(raw: &str) -> bool {
    raw.contains(['*', '?', '['])
}

/// Why a declared path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathProblem {
    Empty,
    Escapes,
    IsRoot,
    InStateDir,
}

impl PathProblem {
    pub fn describe(&self, raw: &str) -> String {
        match self {
            PathProblem::Empty => "empty path".to_string(),
            PathProblem::Escapes => format!("path `{raw}` is outside the pipeline directory"),
            PathProblem::IsRoot => format!("path `{raw}` is the pipeline directory itself"),
            PathProblem::InStateDir => format!("path `{raw}` is inside dagrun's own `.dagrun/` directory"),
        }
    }

    pub fn help(&self) -> &'static str {
        match self {
            PathProblem::Empty => "give a file, directory or glob relative to the pipeline file",
            PathProblem::Escapes => {
                "inputs and outputs must lie under the directory of pipeline.toml; move the file there, or set `allow_outside_paths = true` in [pipeline]"
            }
            PathProblem::IsRoot => "name the files or subdirectories the stage reads or writes",
            PathProblem::InStateDir => "`.dagrun/` holds dagrun's state; keep stage files elsewhere",
        }
    }
}

/// Normalises a path as written in pipeline.toml. Absolute paths are accepted when they
/// lie inside `root` (which must itself be absolute and normalised).
pub fn normalize(root: &Path, raw: &str) -> Result<RelPath, PathProblem> {
    normalize_with(root, raw, false)
}

/// [`normalize`], but with `allow_outside` a path outside the root is kept (as `../x` or
/// an absolute path) instead of refused: `[pipeline] allow_outside_paths = true`.
pub fn normalize_with(root: &Path, raw: &str, allow_outside: bool) -> Result<RelPath, PathProblem> {
    match normalize_inside(root, raw) {
        Err(PathProblem::Escapes) if allow_outside => Ok(RelPath(outside(raw))),
        other => other,
    }
}

/// A path outside the root, lexically normalised: absolute stays absolute; a relative one
/// keeps its leading `..` components.
fn outside(raw: &str) -> String {
    let absolute = raw.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            ".." if absolute => {}
            other => parts.push(other),
        }
    }
    if absolute { format!("/{}", parts.join("/")) } else { parts.join("/") }
}

fn normalize_inside(root: &Path, raw: &str) -> Result<RelPath, PathProblem> {
    if raw.trim().is_empty() {
        return Err(PathProblem::Empty);
    }
    let relative = if raw.starts_with('/') {
        let root_str = root.to_str().unwrap_or_default();
        match raw.strip_prefix(root_str) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => return Err(PathProblem::Escapes),
        }
    } else {
        raw
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in relative.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(PathProblem::Escapes);
                }
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return Err(PathProblem::IsRoot);
    }
    if parts[0] == ".dagrun" {
        return Err(PathProblem::InStateDir);
    }
    Ok(RelPath(parts.join("/")))
}

/// `path` relative to `root`, as text, when it lies inside it by name alone (no `..`, not
/// `root` itself): what a watcher's absolute path is to the stages' declared paths.
pub fn relative_inside<'a>(path: &'a Path, root: &Path) -> Option<&'a str> {
    let rel = path.strip_prefix(root).ok()?;
    let plain = rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    rel.to_str().filter(|rel| plain && !rel.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<String, PathProblem> {
        normalize(Path::new("/work/p"), raw).map(|p| p.0)
    }

    #[test]
    fn equivalent_spellings_normalise_to_one_path() {
        for raw in ["a/b", "./a/b", "a//b/", "a/c/../b", "/work/p/a/b"] {
            assert_eq!(norm(raw).unwrap(), "a/b", "{raw}");
        }
    }

    #[test]
    fn paths_outside_the_root_are_kept_when_the_pipeline_allows_them() {
        let norm = |raw| normalize_with(Path::new("/work/p"), raw, true).map(|p| p.0);
        assert_eq!(norm("../shared/x.csv").unwrap(), "../shared/x.csv");
        assert_eq!(norm("a/../../b/./c").unwrap(), "../b/c");
        assert_eq!(norm("/etc//hosts").unwrap(), "/etc/hosts");
        assert_eq!(norm("./in/side").unwrap(), "in/side");
        let rel = |raw| normalize_with(Path::new("/work/p"), raw, true).unwrap();
        assert!(rel("../shared/x.csv").is_outside() && rel("/etc/hosts").is_outside() && rel("..").is_outside());
        assert!(!rel("in/side").is_outside() && !rel("..x/y").is_outside());
    }

    #[test]
    fn paths_leaving_the_root_are_refused() {
        assert_eq!(norm("../x"), Err(PathProblem::Escapes));
        assert_eq!(norm("a/../../x"), Err(PathProblem::Escapes));
        assert_eq!(norm("/etc/passwd"), Err(PathProblem::Escapes));
        assert_eq!(norm("/work/pp/x"), Err(PathProblem::Escapes));
        assert_eq!(norm("."), Err(PathProblem::IsRoot));
        assert_eq!(norm(".dagrun/state.db"), Err(PathProblem::InStateDir));
    }

    #[test]
    fn within_and_ancestors_respect_component_boundaries() {
        let p = RelPath("data/x/y.csv".into());
        assert!(p.is_within(&RelPath("data".into())));
        assert!(!p.is_within(&RelPath("dat".into())));
        assert_eq!(p.ancestors().collect::<Vec<_>>(), ["data/x", "data"]);
    }
}
