//! Glob inputs: one matcher for expansion, graph edges, validation and the watcher.

use std::fmt;
use std::path::Path;

use super::path::RelPath;

/// A glob input, compiled once when the pipeline loads. It matches as a shell does, one
/// `/`-separated component at a time: `*`, `?` and `[...]` never cross `/`; a wildcard
/// never matches a leading `.` (so `*` never reaches `.dagrun/`); `**` as a whole component
/// matches zero or more directories, none of them hidden. Every other component with a
/// metacharacter is a `globset` glob (so `{a,b}` works within a component); the rest are
/// compared as plain strings.
#[derive(Clone)]
pub struct GlobPattern {
    text: RelPath,
    parts: Vec<Part>,
    /// Length of the literal directory the pattern starts in (see [`GlobPattern::base`]).
    base_len: usize,
}

#[derive(Clone)]
enum Part {
    Literal(String),
    /// `dot`: the component starts with a literal `.`, so it may match hidden names.
    Wild {
        matcher: globset::GlobMatcher,
        dot: bool,
    },
    /// `**`: zero or more directories.
    AnyDirs,
}

/// Kept as its text (in the spec cache), compiled again when read.
impl serde::Serialize for GlobPattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.text.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for GlobPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<GlobPattern, D::Error> {
        let text = RelPath::deserialize(deserializer)?;
        GlobPattern::new(text).map_err(serde::de::Error::custom)
    }
}

/// A glob that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid glob `{pattern}`: {reason}")]
pub struct InvalidGlob {
    pub pattern: String,
    pub reason: String,
}

impl GlobPattern {
    /// Compiles a normalised pattern.
    pub fn new(text: RelPath) -> Result<GlobPattern, InvalidGlob> {
        let mut parts = Vec::new();
        for component in text.as_str().split('/') {
            parts.push(if component == "**" {
                if matches!(parts.last(), Some(Part::AnyDirs)) {
                    continue; // `**/**` is `**`, and backtracking over it twice is wasted
                }
                Part::AnyDirs
            } else if component.contains(['*', '?', '[', ']', '{', '}', '\\']) {
                let glob = globset::GlobBuilder::new(component)
                    .literal_separator(true)
                    .build()
                    .map_err(|err| InvalidGlob { pattern: text.to_string(), reason: err.kind().to_string() })?;
                Part::Wild { matcher: glob.compile_matcher(), dot: component.starts_with('.') }
            } else {
                Part::Literal(component.to_string())
            });
        }
        let literal = parts.iter().take_while(|p| matches!(p, Part::Literal(_))).count();
        let base_len = if literal == parts.len() {
            text.as_str().len()
        } else {
            text.as_str().split('/').take(literal).map(|c| c.len() + 1).sum::<usize>().saturating_sub(1)
        };
        Ok(GlobPattern { text, parts, base_len })
    }

    pub fn as_rel(&self) -> &RelPath {
        &self.text
    }

    pub fn as_str(&self) -> &str {
        self.text.as_str()
    }

    /// The directory the pattern starts in: its components before the first wildcard
    /// (`data/raw` for `data/raw/*/x.csv`); empty for the pipeline directory.
    pub fn base(&self) -> &str {
        &self.text.as_str()[..self.base_len]
    }

    /// Whether `path` (relative, `/`-separated, normalised) matches the pattern, or lies
    /// inside a directory that does.
    pub fn covers(&self, path: &str) -> bool {
        self.matches(path) || path.match_indices('/').any(|(i, _)| self.matches(&path[..i]))
    }

    /// Whether `path` (relative, `/`-separated, normalised) matches the pattern.
    pub fn matches(&self, path: &str) -> bool {
        let names: Vec<&str> = path.split('/').collect();
        match_from(&self.parts, &names)
    }

    /// Whether the pattern could match `path` itself or something inside the directory
    /// `path`: what an output directory must satisfy to be read through this glob.
    pub fn reaches(&self, path: &str) -> bool {
        let names: Vec<&str> = path.split('/').collect();
        reach_from(&self.parts, &names)
    }

    /// The files and directories under `root` that match, relative to it and sorted.
    /// This reads the filesystem: the planner calls it, never the spec loader.
    pub fn expand(&self, root: &Path) -> Vec<String> {
        let base = self.base();
        let start = root.join(base);
        let relative = |path: &Path| -> Option<String> {
            let rest = path.strip_prefix(&start).ok()?.to_str()?;
            Some(match (base.is_empty(), rest.is_empty()) {
                (true, _) => rest.to_string(),
                (false, true) => base.to_string(),
                (false, false) => format!("{base}/{rest}"),
            })
        };
        let walk = walkdir::WalkDir::new(&start)
            .follow_links(true)
            .into_iter()
            .filter_entry(|entry| relative(entry.path()).is_some_and(|rel| rel.is_empty() || self.reaches(&rel)));
        let mut found: Vec<String> = walk
            .filter_map(Result::ok)
            .filter_map(|entry| relative(entry.path()))
            .filter(|rel| !rel.is_empty() && self.matches(rel))
            .collect();
        found.sort();
        found
    }
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

impl Part {
    fn matches(&self, name: &str) -> bool {
        match self {
            Part::Literal(text) => text == name,
            Part::Wild { matcher, dot } => (*dot || !is_hidden(name)) && matcher.is_match(name),
            Part::AnyDirs => !is_hidden(name),
        }
    }
}

fn match_from(parts: &[Part], names: &[&str]) -> bool {
    match parts.split_first() {
        None => names.is_empty(),
        Some((Part::AnyDirs, rest)) => {
            // Absorb zero, one, ... leading names, stopping at the first hidden one.
            for skip in 0..=names.len() {
                if match_from(rest, &names[skip..]) {
                    return true;
                }
                if names.get(skip).is_some_and(|name| is_hidden(name)) {
                    return false;
                }
            }
            false
        }
        Some((part, rest)) => {
            names.split_first().is_some_and(|(name, names)| part.matches(name) && match_from(rest, names))
        }
    }
}

fn reach_from(parts: &[Part], names: &[&str]) -> bool {
    let Some((name, after)) = names.split_first() else { return true };
    match parts.split_first() {
        None => false,
        Some((Part::AnyDirs, rest)) => reach_from(rest, names) || (!is_hidden(name) && reach_from(parts, after)),
        Some((part, rest)) => part.matches(name) && reach_from(rest, after),
    }
}

impl fmt::Display for GlobPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for GlobPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GlobPattern({:?})", self.as_str())
    }
}

impl PartialEq for GlobPattern {
    fn eq(&self, other: &GlobPattern) -> bool {
        self.text == other.text
    }
}

impl Eq for GlobPattern {}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(text: &str) -> GlobPattern {
        GlobPattern::new(RelPath::parse_normalized(text).unwrap()).unwrap()
    }

    #[test]
    fn a_glob_covers_what_it_matches_and_what_lies_inside_a_matched_directory() {
        let g = glob("data/*");
        assert!(g.covers("data/a.csv"));
        assert!(g.covers("data/sub/b.csv"), "inside the matched directory data/sub");
        assert!(!g.covers("other/a.csv"));
        assert!(!g.covers("data"));
    }

    #[test]
    fn a_star_or_question_mark_never_crosses_a_slash() {
        assert!(glob("data/*.json").matches("data/x.json"));
        assert!(!glob("data/*.json").matches("data/sub/x.json"));
        assert!(!glob("data/*").matches("data/sub/x.json"));
        assert!(glob("a?c").matches("abc"));
        assert!(!glob("a?c").matches("a/c"));
        assert!(!glob("data/*.json").reaches("data/sub/x.json"), "`*` does not cross `/`");
    }

    #[test]
    fn a_wildcard_never_matches_a_leading_dot_but_a_literal_dot_does() {
        assert!(!glob("*").matches(".dagrun"));
        assert!(!glob("*").reaches(".dagrun"));
        assert!(!glob("*/state.db").reaches(".dagrun/state.db"));
        assert!(!glob("?git").matches(".git"));
        assert!(!glob("[.]git").matches(".git"));
        assert!(!glob("**/*.csv").matches(".hidden/x.csv"), "`**` skips hidden directories");
        assert!(!glob("data/**/*.csv").matches("data/a/.cache/x.csv"));
        assert!(!glob("data/*.csv").matches("data/.x.csv"));
        assert!(glob(".*").matches(".env"));
        assert!(glob("data/.cache/*.csv").matches("data/.cache/x.csv"));
        assert!(glob("**/.cache/*.csv").matches("a/b/.cache/x.csv"));
    }

    #[test]
    fn a_double_star_matches_zero_or_more_directories() {
        let deep = glob("data/**/*.csv");
        assert!(deep.matches("data/x.csv"));
        assert!(deep.matches("data/a/x.csv"));
        assert!(deep.matches("data/a/b/deep.csv"));
        assert!(!deep.matches("data/a/b/deep.txt"));
        assert!(!deep.matches("other/a/x.csv"));
        assert!(glob("**/*.csv").matches("x.csv"));
        assert!(glob("**/*.csv").matches("a/b/x.csv"));
        assert!(glob("data/**").matches("data/a/b"));
        assert!(glob("a/**/b/**/c").matches("a/x/b/y/z/c"));
        assert!(!glob("a/**/b/**/c").matches("a/x/y/c"));
    }

    #[test]
    fn a_glob_reaches_matches_and_the_directories_that_could_hold_them() {
        assert!(glob("raw/*.csv").reaches("raw"));
        assert!(glob("raw/*.csv").reaches("raw/a.csv"));
        assert!(glob("data/*/x.csv").reaches("data/sub"));
        assert!(!glob("raw/*.csv").reaches("raw/a.txt"));
        assert!(!glob("raw/*.csv").reaches("raw/sub/a.csv"));
        assert!(glob("data/**/*.csv").reaches("data/a/b/deep.csv"));
        assert!(glob("data/**/*.csv").reaches("data/a/b"));
        assert!(glob("data/**/*.csv").reaches("data"));
        assert!(!glob("data/**/*.csv").reaches("other"));
        assert!(!glob("data/**/*.csv").reaches("data/.cache"));
    }

    #[test]
    fn braces_and_classes_work_within_a_component() {
        assert!(glob("data/*.{csv,tsv}").matches("data/x.tsv"));
        assert!(glob("data/part-[0-9].csv").matches("data/part-7.csv"));
        assert!(!glob("data/part-[0-9].csv").matches("data/part-x.csv"));
    }

    #[test]
    fn the_base_is_the_literal_directory_before_the_first_wildcard() {
        assert_eq!(glob("data/raw/*/x.csv").base(), "data/raw");
        assert_eq!(glob("*.csv").base(), "");
        assert_eq!(glob("data/**/*.csv").base(), "data");
        assert_eq!(glob("data/x.csv").base(), "data/x.csv");
    }

    #[test]
    fn an_unclosed_class_is_an_invalid_glob() {
        let err = GlobPattern::new(RelPath::parse_normalized("data/[a.csv").unwrap()).unwrap_err();
        assert!(err.to_string().starts_with("invalid glob `data/[a.csv`: "), "{err}");
    }

    #[test]
    fn expanding_walks_from_the_base_and_lists_sorted_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        for file in ["data/b.csv", "data/a/x.csv", "data/a/b/deep.csv", "data/a/note.txt", "data/.cache/h.csv"] {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        }
        assert_eq!(glob("data/**/*.csv").expand(dir.path()), ["data/a/b/deep.csv", "data/a/x.csv", "data/b.csv"]);
        assert_eq!(glob("data/*.csv").expand(dir.path()), ["data/b.csv"]);
        assert_eq!(glob("*").expand(dir.path()), ["data"]);
        assert!(glob("missing/*.csv").expand(dir.path()).is_empty());
    }
}
