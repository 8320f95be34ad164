//! Errors in pipeline.toml, rendered with the file, line, column and the offending text.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// One problem found in the pipeline file.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub message: String,
    pub span: Option<Range<usize>>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, span: Option<Range<usize>>) -> Self {
        Diagnostic { message: message.into(), span, help: None }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Every problem found in one pipeline file, with the text needed to show where.
#[derive(Debug)]
pub struct SpecError {
    pub file: PathBuf,
    pub source_text: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl SpecError {
    pub fn single(file: PathBuf, source_text: String, diagnostic: Diagnostic) -> Self {
        SpecError { file, source_text, diagnostics: vec![diagnostic] }
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.source_text[..char_floor(&self.source_text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    fn render(&self, f: &mut fmt::Formatter<'_>, diag: &Diagnostic) -> fmt::Result {
        writeln!(f, "error: {}", diag.message)?;
        let file = self.file.display();
        match &diag.span {
            Some(span) => {
                let (line, col) = self.line_col(span.start);
                let text = self.source_text.lines().nth(line - 1).unwrap_or("");
                let gutter = " ".repeat(line.to_string().len());
                let line_end =
                    self.source_text[span.start..].find('\n').map_or(self.source_text.len(), |i| span.start + i);
                let width = self.source_text[span.start..span.end.min(line_end).max(span.start)].chars().count().max(1);
                writeln!(f, "{gutter}--> {file}:{line}:{col}")?;
                writeln!(f, "{gutter} |")?;
                writeln!(f, "{line} | {text}")?;
                writeln!(f, "{gutter} | {}{}", " ".repeat(col - 1), "^".repeat(width))?;
            }
            None => writeln!(f, " --> {file}")?,
        }
        if let Some(help) = &diag.help {
            writeln!(f, "  = help: {help}")?;
        }
        Ok(())
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diag) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            self.render(f, diag)?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// `offset`, moved back to the nearest character boundary within `text`.
fn char_floor(text: &str, offset: usize) -> usize {
    let mut at = offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The known name closest to `unknown`, if it is close enough to be a likely typo.
pub fn suggest<'a>(unknown: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(unknown, k), k))
        .filter(|&(d, k)| d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_column_and_caret() {
        let err = SpecError::single(
            "pipeline.toml".into(),
            "[stages.a]\nafter = [\"featurs\"]\n".into(),
            Diagnostic::new("unknown stage `featurs` in `after`", Some(20..29)).help("did you mean `features`?"),
        );
        assert_eq!(
            err.to_string(),
            "error: unknown stage `featurs` in `after`\n\
             \x20--> pipeline.toml:2:10\n\
             \x20 |\n\
             2 | after = [\"featurs\"]\n\
             \x20 |          ^^^^^^^^^\n\
             \x20 = help: did you mean `features`?\n"
        );
    }

    #[test]
    fn suggests_only_near_names() {
        assert_eq!(suggest("cmdd", ["cmd", "fn", "inputs"]), Some("cmd"));
        assert_eq!(suggest("featurs", ["features", "model"]), Some("features"));
        assert_eq!(suggest("zzz", ["features", "model"]), None);
    }
}
