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

/// Text in a Markdown table cell: no cell break, no HTML, one line. Inside its code spans
/// (between backticks, as in `project: <name>`) Markdown shows `&lt;` literally, so there
/// only the cell separator is escaped, and a line break becomes a space.
pub(crate) fn md_escape(s: &str) -> String {
    let parts: Vec<&str> = s.split('`').collect();
    // An odd backtick opens no span: the text after it is plain.
    let last_code = if parts.len() % 2 == 1 {
        parts.len()
    } else {
        parts.len() - 1
    };
    let mut out = String::with_capacity(s.len());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('`');
        }
        if i % 2 == 1 && i < last_code {
            out.push_str(&part.replace('|', "\\|").replace('\n', " "));
        } else {
            out.push_str(
                &part
                    .replace('|', "\\|")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('\n', "<br>"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::md_escape;

    #[test]
    fn markdown_cells_escape_html_outside_code_spans_only() {
        assert_eq!(
            md_escape("add `project: <name>` to <one> doc"),
            "add `project: <name>` to &lt;one&gt; doc"
        );
        assert_eq!(md_escape("`a|b` | c"), "`a\\|b` \\| c");
        assert_eq!(md_escape("odd ` <x>"), "odd ` &lt;x&gt;");
        assert_eq!(md_escape("two\nlines `x\ny`"), "two<br>lines `x y`");
    }
}
