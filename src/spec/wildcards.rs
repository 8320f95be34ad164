//! Wildcard patterns for file templates, as Snakemake writes them: `text/{name}.txt`
//! matches `text/a.txt` with `name = "a"`. A wildcard matches one or more characters within
//! one path component, never a leading `.`; the same wildcard twice must match the same
//! text. Matching files are found with the equivalent glob (`text/*.txt`).

/// A compiled wildcard pattern.
#[derive(Debug, Clone)]
pub(super) struct WildcardPattern {
    components: Vec<Vec<Piece>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    Wildcard(String),
}

impl WildcardPattern {
    /// Parses `text`, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<WildcardPattern, String> {
        if text.contains(['*', '?', '[', ']']) {
            return Err("use `{name}` wildcards, not glob characters (`*`, `?`, `[...]`)".into());
        }
        let mut components = Vec::new();
        for component in text.split('/') {
            let mut pieces = Vec::new();
            let mut rest = component;
            while let Some(open) = rest.find('{') {
                let close = rest[open..].find('}').map(|c| open + c).ok_or("a `{` is never closed")?;
                let name = &rest[open + 1..close];
                let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(format!("`{{{name}}}` is not a wildcard name (letters, digits and `_`)"));
                }
                if super::vars::RESERVED.contains(&name) {
                    return Err(format!("`{{{name}}}` is one of dagrun's own names; call the wildcard something else"));
                }
                if open > 0 {
                    pieces.push(Piece::Literal(rest[..open].to_string()));
                }
                if matches!(pieces.last(), Some(Piece::Wildcard(_))) {
                    return Err("two wildcards side by side cannot be told apart; put text between them".into());
                }
                pieces.push(Piece::Wildcard(name.to_string()));
                rest = &rest[close + 1..];
            }
            if rest.contains('}') {
                return Err("a `}` is never opened".into());
            }
            if !rest.is_empty() {
                pieces.push(Piece::Literal(rest.to_string()));
            }
            components.push(pieces);
        }
        if !components.iter().flatten().any(|p| matches!(p, Piece::Wildcard(_))) {
            return Err("the pattern has no `{name}` wildcard".into());
        }
        Ok(WildcardPattern { components })
    }

    /// The wildcard names, in order of first appearance.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for piece in self.components.iter().flatten() {
            if let Piece::Wildcard(name) = piece
                && !names.contains(&name.as_str())
            {
                names.push(name);
            }
        }
        names
    }

    /// The glob that finds candidate files: each wildcard a `*`.
    pub fn glob(&self) -> String {
        let components: Vec<String> = self
            .components
            .iter()
            .map(|pieces| {
                pieces
                    .iter()
                    .map(|piece| match piece {
                        Piece::Literal(text) => text.as_str(),
                        Piece::Wildcard(_) => "*",
                    })
                    .collect()
            })
            .collect();
        components.join("/")
    }

    /// Each wildcard's text in `path`, in the order of [`WildcardPattern::names`], or `None`
    /// when the path does not match (or one wildcard matches two different texts).
    pub fn capture(&self, path: &str) -> Option<Vec<String>> {
        let names: Vec<&str> = path.split('/').collect();
        if names.len() != self.components.len() {
            return None;
        }
        let mut found: Vec<(&str, &str)> = Vec::new();
        for (pieces, name) in self.components.iter().zip(names) {
            capture_component(pieces, name, &mut found)?;
        }
        Some(self.names().iter().map(|n| found.iter().find(|(k, _)| k == n).unwrap().1.to_string()).collect())
    }
}

/// Matches one component, recording wildcards' texts; backtracks over where each ends.
fn capture_component<'p, 't>(pieces: &'p [Piece], text: &'t str, found: &mut Vec<(&'p str, &'t str)>) -> Option<()> {
    let Some((first, rest)) = pieces.split_first() else {
        return text.is_empty().then_some(());
    };
    match first {
        Piece::Literal(literal) => capture_component(rest, text.strip_prefix(literal.as_str())?, found),
        Piece::Wildcard(name) => {
            if text.starts_with('.') {
                return None;
            }
            let ends = text.char_indices().map(|(i, c)| i + c.len_utf8());
            for end in ends {
                let value = &text[..end];
                if found.iter().any(|(k, v)| k == name && *v != value) {
                    continue;
                }
                let before = found.len();
                found.push((name, value));
                if capture_component(rest, &text[end..], found).is_some() {
                    return Some(());
                }
                found.truncate(before);
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(pattern: &str, path: &str) -> Option<Vec<String>> {
        WildcardPattern::parse(pattern).unwrap().capture(path)
    }

    #[test]
    fn wildcards_capture_within_one_component() {
        assert_eq!(capture("text/{name}.txt", "text/a.txt").unwrap(), ["a"]);
        assert_eq!(capture("text/{name}.txt", "text/a.b.txt").unwrap(), ["a.b"]);
        assert_eq!(capture("text/{name}.txt", "text/x/a.txt"), None);
        assert_eq!(capture("text/{name}.txt", "text/.a.txt"), None);
        assert_eq!(capture("text/{name}.txt", "text/.txt"), None);
        assert_eq!(capture("data/{sample}/{lane}.fq", "data/s1/l2.fq").unwrap(), ["s1", "l2"]);
        assert_eq!(capture("{a}/{a}.csv", "x/x.csv").unwrap(), ["x"]);
        assert_eq!(capture("{a}/{a}.csv", "x/y.csv"), None);
    }

    #[test]
    fn patterns_turn_into_the_glob_that_finds_candidates() {
        let pattern = WildcardPattern::parse("data/{sample}_{lane}.fq").unwrap();
        assert_eq!(pattern.glob(), "data/*_*.fq");
        assert_eq!(pattern.names(), ["sample", "lane"]);
        assert_eq!(pattern.capture("data/s_1_2.fq").unwrap(), ["s", "1_2"]);
    }

    #[test]
    fn bad_patterns_say_why() {
        assert!(WildcardPattern::parse("text/*.txt").unwrap_err().contains("not glob characters"));
        assert!(WildcardPattern::parse("text/a.txt").unwrap_err().contains("no `{name}` wildcard"));
        assert!(WildcardPattern::parse("{a}{b}.txt").unwrap_err().contains("side by side"));
        assert!(WildcardPattern::parse("{a.txt").unwrap_err().contains("never closed"));
    }
}
