//! Views of what the stages produce: diagnostics, plans and reports, for people (colour when
//! the output is a terminal and `NO_COLOR` is unset) and for machines (JSON).

pub mod diagnostics;
pub mod plan;

/// How human output looks.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
    pub width: usize,
}

impl Style {
    pub fn plain() -> Style {
        Style {
            color: false,
            width: 100,
        }
    }
}

/// A code span in a table cell: only the cell separator needs escaping there, and a line
/// break (it would end the row) becomes a space.
pub(crate) fn md_code(s: &str) -> String {
    format!(
        "`{}`",
        s.replace('`', "'").replace('|', "\\|").replace('\n', " ")
    )
}

/// Text in a Markdown table cell: no cell break, no HTML, one line.
pub(crate) fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\n', "<br>")
}
