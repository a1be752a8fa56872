//! Config diagnostics: one error with where it is (file:line:col), what was expected and a hint.
//!
//! Every config problem becomes a [`Diagnostic`]; resolution collects all of them instead of stopping
//! at the first, and [`Diagnostics`] renders them the way compilers do, with the offending source
//! line. What it renders goes through [`crate::redact`]: a secret written in the file (or echoed in
//! a message, such as a URL's password) is never printed.

use std::fmt;
use std::ops::Range;

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Byte range in the source the problem points at (empty when it concerns the whole file).
    pub span: Range<usize>,
    /// What is wrong, e.g. "unknown key `pathz` in source `logs`".
    pub message: String,
    /// How to fix it, e.g. "did you mean `paths`?".
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A problem at `span`.
    pub fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic { span, message: message.into(), hint: None }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Every problem found in one file, with the text needed to print positions.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    /// The file as named on the command line.
    pub file: String,
    /// Its text (for line/column and the quoted line).
    pub source: String,
    /// The problems, in source order.
    pub items: Vec<Diagnostic>,
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineCol {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub col: usize,
}

/// Converts a byte offset into a line and column.
pub fn line_col(source: &str, offset: usize) -> LineCol {
    let offset = offset.min(source.len());
    let before = &source[..floor_char_boundary(source, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    LineCol { line, col }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl Diagnostics {
    /// Position of one diagnostic.
    pub fn position(&self, d: &Diagnostic) -> LineCol {
        line_col(&self.source, d.span.start)
    }

    /// One line per diagnostic, `file:line:col: message`, without source excerpts (for tests and logs).
    pub fn short(&self) -> Vec<String> {
        self.items
            .iter()
            .map(|d| {
                let p = self.position(d);
                format!("{}:{}:{}: {}", self.file, p.line, p.col, crate::redact::text(&d.message))
            })
            .collect()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.items {
            let p = self.position(d);
            writeln!(f, "error: {}", crate::redact::text(&d.message))?;
            writeln!(f, "  --> {}:{}:{}", self.file, p.line, p.col)?;
            if let Some(text) = self.source.lines().nth(p.line - 1) {
                let gutter = p.line.to_string();
                // A span a connector computed (an offset inside a string value) may end inside a
                // character: widen it to whole characters.
                let (mut start, mut end) = (d.span.start.min(self.source.len()), d.span.end.min(self.source.len()));
                while !self.source.is_char_boundary(start) {
                    start -= 1;
                }
                while !self.source.is_char_boundary(end) {
                    end += 1;
                }
                let pointed = crate::redact::text(self.source[start..end.max(start)].lines().next().unwrap_or(""));
                let width = pointed.chars().count().max(1);
                // The caret's column in the line as printed, secrets masked.
                let before: String = text.chars().take(p.col - 1).collect();
                let col = crate::redact::text(&before).chars().count();
                writeln!(f, "{} |", " ".repeat(gutter.len()))?;
                writeln!(f, "{gutter} | {}", crate::redact::text(text))?;
                writeln!(f, "{} | {}{}", " ".repeat(gutter.len()), " ".repeat(col), "^".repeat(width))?;
            }
            if let Some(h) = &d.hint {
                writeln!(f, "  = hint: {}", crate::redact::text(h))?;
            }
            writeln!(f)?;
        }
        let n = self.items.len();
        write!(f, "{} error{} in {}", n, if n == 1 { "" } else { "s" }, self.file)
    }
}

impl std::error::Error for Diagnostics {}

/// The closest of `candidates` to `word`, if close enough to be a plausible typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), LineCol { line: 1, col: 1 });
        assert_eq!(line_col(src, 6), LineCol { line: 2, col: 1 });
        assert_eq!(line_col(src, 9), LineCol { line: 2, col: 3 });
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(did_you_mean("pathz", ["paths", "url"]), Some("paths"));
        assert_eq!(did_you_mean("zzz", ["paths", "url"]), None);
    }
}
