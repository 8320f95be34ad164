//! The placeholders of a shell command (`${params.KEY}`, `${inputs}`, `${outputs}`,
//! `${inputs.NAME}`, `${outputs.NAME}`) and the quoting around each.
//!
//! The executor never pastes a value into the command: it passes each value in the
//! environment and replaces the placeholder with a reference to that variable, so no value
//! can run whatever this scan decides. The scan only picks the most faithful form of
//! reference for where the placeholder stands. It knows enough of `sh`'s grammar for that:
//! quotes, backslashes, comments, `$(...)`, `$((...))`, backticks and here-documents.
//! Where it guesses wrong the reference is less faithful (split, or printed as text), or
//! the shell fails on a leftover placeholder; it is never code. The one exception is bash
//! (when it is `sh`), which evaluates a variable's text as arithmetic: `$((...))` is
//! handled (see `expand_command`), bash-only forms such as `${x:OFFSET}` are not.

use std::ops::Range;

/// A reference dagrun substitutes in a shell command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandRef<'a> {
    Param(&'a str),
    Inputs,
    Outputs,
    /// `${inputs.NAME}`: one named input (every match of a glob).
    Input(&'a str),
    /// `${outputs.NAME}`: one named output.
    Output(&'a str),
}

/// Where a placeholder stands, as the shell will read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// Outside quotes, also inside `$(...)` and backticks (anything the scan cannot place).
    Unquoted,
    /// Inside `"..."` or an unquoted here-document body: variables expand, into one string.
    DoubleQuoted,
    /// Inside `'...'`: nothing expands until the quote is closed.
    SingleQuoted,
    /// Inside `$((...))`: the shell evaluates the value as an arithmetic expression.
    Arithmetic,
    /// In a comment: the shell reads nothing there.
    Comment,
    /// In a quoted here-document body (`<<'EOF'`): the shell expands nothing, so no value
    /// can reach it; the validator refuses a placeholder there.
    QuotedHeredoc,
}

/// One placeholder: its byte range in the command, what it names, and its quoting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder<'a> {
    pub range: Range<usize>,
    pub reference: CommandRef<'a>,
    pub quoting: Quoting,
}

/// Shared by the validator and the executor: the placeholders in a command, as
/// (byte range, reference) pairs. A `$` escaped with a backslash starts none.
pub fn command_references(cmd: &str) -> Vec<(Range<usize>, CommandRef<'_>)> {
    scan_command(cmd).into_iter().map(|p| (p.range, p.reference)).collect()
}

/// The placeholders in a command, in order, each with its quoting.
pub fn scan_command(cmd: &str) -> Vec<Placeholder<'_>> {
    let mut scanner = Scanner { cmd, pos: 0, stack: Vec::new(), heredocs: Vec::new(), found: Vec::new() };
    scanner.run();
    scanner.found
}

/// A nesting level of the scan; the script itself is the empty stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// `$(...)`, with the count of `(` opened inside it.
    Subst {
        parens: usize,
    },
    Backtick,
    Double,
    /// `$((...))`, with the count of `(` opened inside it.
    Arith {
        parens: usize,
    },
}

/// A here-document whose body starts after the current line.
struct HereDoc {
    delimiter: Vec<u8>,
    strip_tabs: bool,
    quoted: bool,
}

struct Scanner<'a> {
    cmd: &'a str,
    pos: usize,
    stack: Vec<Frame>,
    heredocs: Vec<HereDoc>,
    found: Vec<Placeholder<'a>>,
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.cmd.as_bytes()
    }

    fn rest(&self) -> &'a [u8] {
        &self.bytes()[self.pos.min(self.cmd.len())..]
    }

    fn run(&mut self) {
        while self.pos < self.cmd.len() {
            match self.stack.last().copied() {
                Some(Frame::Double) => self.step_double(),
                Some(Frame::Arith { .. }) => self.step_arith(),
                frame => self.step_unquoted(frame),
            }
        }
    }

    /// The script, `$(...)` or backticks.
    fn step_unquoted(&mut self, frame: Option<Frame>) {
        if self.placeholder(Quoting::Unquoted) || self.substitution() {
            return;
        }
        match self.rest()[0] {
            b'\\' => self.pos += 2,
            b'\'' => self.single_quoted(),
            b'"' => self.enter(Frame::Double, 1),
            b'`' if frame == Some(Frame::Backtick) => self.leave(1),
            b'`' => self.enter(Frame::Backtick, 1),
            b'(' => {
                if let Some(Frame::Subst { parens }) = self.stack.last_mut() {
                    *parens += 1;
                }
                self.pos += 1;
            }
            b')' => match self.stack.last_mut() {
                Some(Frame::Subst { parens: 0 }) => self.leave(1),
                Some(Frame::Subst { parens }) => {
                    *parens -= 1;
                    self.pos += 1;
                }
                _ => self.pos += 1,
            },
            b'#' if self.starts_word() => {
                let end = self.line_end(self.pos);
                self.placeholders_in(self.pos..end, Quoting::Comment);
                self.pos = end;
            }
            b'<' if self.rest().starts_with(b"<<<") => self.pos += 3,
            b'<' if self.rest().starts_with(b"<<") => self.heredoc_operator(),
            b'\n' => {
                self.pos += 1;
                self.heredoc_bodies();
            }
            _ => self.pos += 1,
        }
    }

    fn step_double(&mut self) {
        if self.placeholder(Quoting::DoubleQuoted) || self.substitution() {
            return;
        }
        match self.rest()[0] {
            // Inside "..." a backslash escapes only `$`, `` ` ``, `"`, `\` and a newline, but
            // skipping whatever follows it makes no difference to the scan.
            b'\\' => self.pos += 2,
            b'"' => self.leave(1),
            b'`' => self.enter(Frame::Backtick, 1),
            _ => self.pos += 1,
        }
    }

    fn step_arith(&mut self) {
        if self.placeholder(Quoting::Arithmetic) || self.substitution() {
            return;
        }
        match self.rest()[0] {
            b'\\' => self.pos += 2,
            b'\'' => self.single_quoted(),
            b'"' => self.enter(Frame::Double, 1),
            b'`' => self.enter(Frame::Backtick, 1),
            b'(' => {
                if let Some(Frame::Arith { parens }) = self.stack.last_mut() {
                    *parens += 1;
                }
                self.pos += 1;
            }
            b')' => match self.stack.last_mut() {
                Some(Frame::Arith { parens: 0 }) => self.leave(if self.rest().starts_with(b"))") { 2 } else { 1 }),
                Some(Frame::Arith { parens }) => {
                    *parens -= 1;
                    self.pos += 1;
                }
                _ => self.pos += 1,
            },
            _ => self.pos += 1,
        }
    }

    fn enter(&mut self, frame: Frame, len: usize) {
        self.stack.push(frame);
        self.pos += len;
    }

    fn leave(&mut self, len: usize) {
        self.stack.pop();
        self.pos += len;
    }

    /// `$((` starts arithmetic (as in `sh`, even where `$( (` was meant), `$(` a command.
    fn substitution(&mut self) -> bool {
        if self.rest().starts_with(b"$((") {
            self.enter(Frame::Arith { parens: 0 }, 3);
        } else if self.rest().starts_with(b"$(") {
            self.enter(Frame::Subst { parens: 0 }, 2);
        } else {
            return false;
        }
        true
    }

    /// Records a placeholder starting here, if one does, and moves past it.
    fn placeholder(&mut self, quoting: Quoting) -> bool {
        match placeholder_at(self.cmd, self.pos, self.cmd.len()) {
            Some((range, reference)) => {
                self.pos = range.end;
                self.found.push(Placeholder { range, reference, quoting });
                true
            }
            None => false,
        }
    }

    /// Every placeholder in a stretch the shell reads without escapes (`'...'`, a comment, a
    /// quoted here-document body).
    fn placeholders_in(&mut self, span: Range<usize>, quoting: Quoting) {
        let mut at = span.start;
        while let Some(start) = self.cmd[at..span.end].find("${").map(|i| at + i) {
            match placeholder_at(self.cmd, start, span.end) {
                Some((range, reference)) => {
                    at = range.end;
                    self.found.push(Placeholder { range, reference, quoting });
                }
                None => at = start + 1,
            }
        }
    }

    fn single_quoted(&mut self) {
        let start = self.pos + 1;
        // An unclosed quote is a syntax error: `sh` runs nothing.
        let end = self.cmd[start..].find('\'').map_or(self.cmd.len(), |i| start + i);
        self.placeholders_in(start..end, Quoting::SingleQuoted);
        self.pos = end + 1;
    }

    /// Whether a `#` here starts a comment: it must start a word.
    fn starts_word(&self) -> bool {
        self.pos == 0 || b" \t\n;&|()<>`".contains(&self.bytes()[self.pos - 1])
    }

    fn line_end(&self, from: usize) -> usize {
        self.cmd[from..].find('\n').map_or(self.cmd.len(), |i| from + i)
    }

    /// `<<WORD` or `<<-WORD`: a body to read after this line. Any quoting in the word makes
    /// the body literal.
    fn heredoc_operator(&mut self) {
        let bytes = self.bytes();
        let mut at = self.pos + 2;
        let strip_tabs = bytes.get(at) == Some(&b'-');
        at += usize::from(strip_tabs);
        while matches!(bytes.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        let (mut delimiter, mut quoted, mut quote) = (Vec::new(), false, None);
        while let Some(&byte) = bytes.get(at) {
            match (quote, byte) {
                (Some(open), _) if byte == open => quote = None,
                (Some(_), _) => delimiter.push(byte),
                (None, b'\'' | b'"') => (quote, quoted) = (Some(byte), true),
                (None, b'\\') => {
                    quoted = true;
                    at += 1;
                    delimiter.extend(bytes.get(at));
                }
                (None, b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'(' | b')' | b'<' | b'>') => break,
                (None, _) => delimiter.push(byte),
            }
            at += 1;
        }
        if !delimiter.is_empty() || quoted {
            self.heredocs.push(HereDoc { delimiter, strip_tabs, quoted });
        }
        self.pos = at;
    }

    /// After a newline: the bodies of the here-documents opened on the line before.
    fn heredoc_bodies(&mut self) {
        for doc in std::mem::take(&mut self.heredocs) {
            while self.pos < self.cmd.len() {
                let end = self.line_end(self.pos);
                let line = &self.bytes()[self.pos..end];
                let tabs = if doc.strip_tabs { line.iter().take_while(|&&b| b == b'\t').count() } else { 0 };
                let line = &line[tabs..];
                if line == doc.delimiter.as_slice() {
                    self.pos = end + 1;
                    break;
                }
                if doc.quoted {
                    self.placeholders_in(self.pos..end, Quoting::QuotedHeredoc);
                } else {
                    self.heredoc_line(end);
                }
                self.pos = end + 1;
            }
        }
    }

    /// A line of an unquoted here-document body: variables expand, `\$` escapes. A `$(...)`
    /// there is not followed: a placeholder inside it gets the double-quoted form.
    fn heredoc_line(&mut self, end: usize) {
        let mut at = self.pos;
        while at < end {
            match self.bytes()[at] {
                b'\\' => at += 2,
                b'$' => match placeholder_at(self.cmd, at, end) {
                    Some((range, reference)) => {
                        at = range.end;
                        self.found.push(Placeholder { range, reference, quoting: Quoting::DoubleQuoted });
                    }
                    None => at += 1,
                },
                _ => at += 1,
            }
        }
    }
}

/// Quotes a word for `sh`: single quotes, with embedded single quotes closed and escaped.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A float as Python writes it (`repr`), so that a value reaches a command as DVC and
/// Python scripts print it: the shortest text that reads back to the same number, with an
/// exponent below 1e-4 and from 1e16 (`1e-05`, `0.0001`, `3.0`, `1e+20`).
pub fn float_text(value: f64) -> String {
    if value.is_nan() {
        return "nan".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').expect("`{:e}` writes an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes an integer exponent");
    if (-4..16).contains(&exponent) {
        let plain = value.to_string();
        if plain.contains('.') { plain } else { format!("{plain}.0") }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}

/// The param `${params.KEY}` names: a top-level key, or a path into tables (`item.lr`).
pub fn param<'a>(params: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    if let Some(value) = params.get(key) {
        return Some(value);
    }
    let mut parts = key.split('.');
    let mut value = params.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// The placeholder starting at `at` and closed before `end`, if one does. Other `${...}`
/// (such as `${HOME}`) are the shell's.
fn placeholder_at(cmd: &str, at: usize, end: usize) -> Option<(Range<usize>, CommandRef<'_>)> {
    let text = cmd.get(at..end)?.strip_prefix("${")?;
    let inner = &text[..text.find('}')?];
    let reference = match inner.strip_prefix("params.") {
        Some(key) => CommandRef::Param(key),
        None if inner == "inputs" => CommandRef::Inputs,
        None if inner == "outputs" => CommandRef::Outputs,
        None => match (inner.strip_prefix("inputs."), inner.strip_prefix("outputs.")) {
            (Some(name), _) => CommandRef::Input(name),
            (_, Some(name)) => CommandRef::Output(name),
            _ => return None,
        },
    };
    Some((at..at + inner.len() + 3, reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_as_python_writes_them() {
        let cases = [
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (0.1, "0.1"),
            (3.0, "3.0"),
            (-2.5, "-2.5"),
            (123456.789, "123456.789"),
            (1e16, "1e+16"),
            (1.5e20, "1.5e+20"),
            (9999999999999998.0, "9999999999999998.0"),
            (1e-300, "1e-300"),
            (f64::INFINITY, "inf"),
        ];
        for (value, text) in cases {
            assert_eq!(float_text(value), text, "{value}");
        }
    }

    /// Each placeholder's quoting, with the text it covers.
    fn quoting(cmd: &str) -> Vec<(&str, Quoting)> {
        scan_command(cmd).into_iter().map(|p| (&cmd[p.range], p.quoting)).collect()
    }

    #[test]
    fn references_are_found_in_order_and_shell_variables_are_left_alone() {
        let refs = command_references("cat ${inputs} > ${outputs} --w ${params.window} ${HOME} ${x:-${params.y}}");
        let kinds: Vec<CommandRef> = refs.iter().map(|(_, r)| *r).collect();
        assert_eq!(
            kinds,
            [CommandRef::Inputs, CommandRef::Outputs, CommandRef::Param("window"), CommandRef::Param("y")]
        );
        assert_eq!(refs[0].0, 4..13);
    }

    #[test]
    fn bare_double_and_single_quoted_placeholders_are_told_apart() {
        assert_eq!(
            quoting(r#"echo ${inputs} "a ${outputs}" 'b ${params.a}' x${params.b}y"#),
            [
                ("${inputs}", Quoting::Unquoted),
                ("${outputs}", Quoting::DoubleQuoted),
                ("${params.a}", Quoting::SingleQuoted),
                ("${params.b}", Quoting::Unquoted),
            ]
        );
    }

    #[test]
    fn a_command_substitution_restarts_unquoted_context_even_inside_double_quotes() {
        assert_eq!(
            quoting(r#"echo "$(cat ${inputs} | tr "a" "${params.b}") ${params.c}" `echo ${params.d}`"#),
            [
                ("${inputs}", Quoting::Unquoted),
                ("${params.b}", Quoting::DoubleQuoted),
                ("${params.c}", Quoting::DoubleQuoted),
                ("${params.d}", Quoting::Unquoted),
            ]
        );
        assert_eq!(quoting(r#"echo "`echo ${params.a}`""#), [("${params.a}", Quoting::Unquoted)]);
        assert_eq!(
            quoting("echo $(f (x) ${params.a}) ${params.b}"),
            [("${params.a}", Quoting::Unquoted), ("${params.b}", Quoting::Unquoted)]
        );
    }

    #[test]
    fn escaped_quotes_open_nothing_and_an_escaped_dollar_is_no_placeholder() {
        assert_eq!(
            quoting(r#"echo \" ${params.a} "x\"${params.b}" \${params.c} "\${params.d}""#),
            [("${params.a}", Quoting::Unquoted), ("${params.b}", Quoting::DoubleQuoted)]
        );
        // In single quotes a backslash is an ordinary character.
        assert_eq!(quoting(r"echo '\${params.a}'"), [("${params.a}", Quoting::SingleQuoted)]);
    }

    #[test]
    fn a_comment_runs_to_the_end_of_the_line_only_from_the_start_of_a_word() {
        assert_eq!(
            quoting("echo a#${params.a} # ${params.b} 'x\necho ${params.c}; echo $# ${params.d}"),
            [
                ("${params.a}", Quoting::Unquoted),
                ("${params.b}", Quoting::Comment),
                ("${params.c}", Quoting::Unquoted),
                ("${params.d}", Quoting::Unquoted),
            ]
        );
    }

    #[test]
    fn arithmetic_is_told_apart_from_a_command_substitution() {
        assert_eq!(
            quoting("echo $(( (${params.n} + 1) << 2 )) $(echo ${params.m})"),
            [("${params.n}", Quoting::Arithmetic), ("${params.m}", Quoting::Unquoted)]
        );
    }

    #[test]
    fn here_document_bodies_expand_unless_their_delimiter_is_quoted() {
        let cmd = "cat <<EOF > ${outputs}\n'${params.a}' \\${params.x}\nEOF\ncat <<-'END' <<\\E2\n\t${params.b}\n\tEND\n${params.c}\nE2\necho ${params.d}";
        assert_eq!(
            quoting(cmd),
            [
                ("${outputs}", Quoting::Unquoted),
                ("${params.a}", Quoting::DoubleQuoted),
                ("${params.b}", Quoting::QuotedHeredoc),
                ("${params.c}", Quoting::QuotedHeredoc),
                ("${params.d}", Quoting::Unquoted),
            ]
        );
        // `<<<` is a here-string, not a here-document; `<<` in arithmetic is a shift.
        assert_eq!(
            quoting("cat <<< x\n${params.a} $(( 1 << 2 ))\n${params.b}"),
            [("${params.a}", Quoting::Unquoted), ("${params.b}", Quoting::Unquoted)]
        );
    }

    #[test]
    fn unclosed_quotes_and_placeholders_do_not_panic() {
        for cmd in ["echo '${params.a}", "echo \"${params.a", "echo $((${params.a}", "cat <<", "x\\", "${", "'", "<<-"]
        {
            let _ = scan_command(cmd);
        }
        assert_eq!(quoting("echo \"${params.a}"), [("${params.a}", Quoting::DoubleQuoted)]);
    }
}
