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

/// A code span in a table cell that shows `s` as it is (a Traefik rule's backticks too): its
/// fence is one backtick longer than the longest run inside, padded with a space where the
/// text starts or ends with a backtick (or with a space at both ends, which Markdown would
/// strip); only the cell separator needs escaping there; a line break (it would end the row)
/// becomes a space.
pub(crate) fn md_code(s: &str) -> String {
    let text = code_text(s);
    if text.is_empty() {
        return "` `".into();
    }
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = text.starts_with('`')
        || text.ends_with('`')
        || (text.starts_with(' ') && text.ends_with(' ') && !text.trim().is_empty());
    let space = if pad { " " } else { "" };
    format!("{fence}{space}{text}{space}{fence}")
}

/// The inside of a code span in a table cell. A backslash is shown as it is there (GFM's
/// cell scanner takes a `|` after one as escaped all the same, then drops the one backslash
/// before each `|`).
fn code_text(s: &str) -> String {
    s.replace('|', "\\|")
        .replace("\r\n", " ")
        .replace(['\r', '\n'], " ")
}

/// Text in a Markdown table cell or quote: no cell break, no HTML, no link syntax, no
/// mention, no emphasis or strikethrough, one line; addresses in code spans (`unlinked`). Inside
/// its code spans (between single backticks, as in `project: <name>`) Markdown
/// shows `&lt;` literally, so there only the cell separator is escaped. Runs of two or more
/// backticks (which Markdown pairs only with runs of the same length) become quotes, so that
/// spans are where this function takes them to be.
pub(crate) fn md_escape(s: &str) -> String {
    let mut single = String::with_capacity(s.len());
    let mut run = 0;
    for c in s.chars().map(Some).chain([None]) {
        if c == Some('`') {
            run += 1;
            continue;
        }
        if run == 1 {
            single.push('`');
        } else {
            single.extend(std::iter::repeat_n('\'', run));
        }
        run = 0;
        single.extend(c);
    }
    let parts: Vec<&str> = single.split('`').collect();
    // An odd backtick opens no span: the text after it is plain.
    let last_code = if parts.len() % 2 == 1 {
        parts.len()
    } else {
        parts.len() - 1
    };
    let mut out = String::with_capacity(s.len());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // A backtick left without its pair would pair with a code span that follows in
            // the same cell: a quote instead.
            out.push(if i % 2 == 1 && i >= last_code {
                '\''
            } else {
                '`'
            });
        }
        if i % 2 == 1 && i < last_code {
            out.push_str(&code_text(part));
        } else {
            out.push_str(&unlinked(part, i > 0, i + 1 < parts.len()));
        }
    }
    out
}

/// Plain text of a cell, escaped, with each address GitHub would make a link of (`http://`,
/// `https://`, `www.`) in a code span: an engine's or registry's address is rarely one a
/// reader of the pull request can open, and a span shows it as it is. `after_tick` and
/// `before_tick`: a backtick is right before or after `text` (an address touching one is
/// left as it is: two backticks in a row would be read as another span's delimiter).
fn unlinked(text: &str, after_tick: bool, before_tick: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut first = true;
    while let Some(start) = link_start(rest) {
        let tail = &rest[start..];
        let len = tail.find(char::is_whitespace).unwrap_or(tail.len());
        // Punctuation that ends a sentence or a parenthesis stays outside the span.
        let url = tail[..len].trim_end_matches(['.', ',', ';', ':', ')', '!', '?', '\'', '"']);
        let touches =
            (after_tick && first && start == 0) || (before_tick && url.len() == tail.len());
        first = false;
        out.push_str(&plain(&rest[..start]));
        // One that touches a span, or has a `|` (which a span outside a table would show as
        // `\|`), stays text; the scan goes on after it.
        if touches || url.is_empty() || url.contains('|') {
            let word = &tail[..len.max(1)];
            out.push_str(&plain(word));
            rest = &tail[word.len()..];
            continue;
        }
        out.push('`');
        out.push_str(&code_text(url));
        out.push('`');
        rest = &tail[url.len()..];
    }
    out.push_str(&plain(rest));
    out
}

/// Where the first address GitHub would link starts, at the start of a word.
fn link_start(text: &str) -> Option<usize> {
    text.char_indices()
        .filter(|&(i, _)| i == 0 || !text[..i].ends_with(|c: char| c.is_alphanumeric()))
        .map(|(i, _)| i)
        .find(|&i| {
            let t = &text.as_bytes()[i..];
            ["http://", "https://", "www."]
                .iter()
                .any(|p| t.len() > p.len() && t[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
        })
}

/// Plain text of a cell, escaped (`md_escape`).
fn plain(part: &str) -> String {
    let mut out = String::with_capacity(part.len() + 16);
    let mut chars = part.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            // Emphasis and strikethrough stay text.
            '\\' | '|' | '[' | ']' | '*' | '_' | '~' => {
                out.push('\\');
                out.push(c);
            }
            // GitHub finds mentions and references in the rendered text (an entity is `@` by
            // then): a zero-width space after `@` keeps `@org/team` from pinging anyone, and
            // after `#` keeps `#1` and `org/repo#1` from linking an issue (and telling it it
            // was mentioned, in another repository too).
            '@' | '#' => {
                out.push(c);
                out.push_str("&#8203;");
            }
            // `$...$` is inline maths on GitHub: a dollar as an entity is never a delimiter.
            '$' => out.push_str("&#36;"),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\r' | '\n' => out.push_str("<br>"),
            _ => out.push(c),
        }
    }
    // GitHub links any `scheme://` it finds, even inside a word (`2https://...`, `ftp://`):
    // the colon as an entity shows the same and is never a link.
    unreferenced(&out.replace("://", "&#58;//"))
}

/// `text` with a zero-width space after each `GH-` (in any case) that a digit follows: GitHub
/// links `GH-1` to an issue as it does `#1`.
fn unreferenced(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest
        .as_bytes()
        .windows(4)
        .position(|w| w[..3].eq_ignore_ascii_case(b"gh-") && w[3].is_ascii_digit())
    {
        out.push_str(&rest[..i + 3]);
        out.push_str("&#8203;");
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    out
}

/// Names in backticks, comma-separated, for messages: `` `a`, `b` ``.
pub fn code_list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
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
        assert_eq!(md_escape("odd ` <x>"), "odd ' &lt;x&gt;");
        // A message with an odd number of backticks followed by a code span in one cell: the
        // stray one cannot pair with the span's.
        let cell = format!(
            "{}<br>{}",
            md_escape("outposts `Bob`s proxy` and `Edge`"),
            super::md_code("set.yaml:3:1")
        );
        assert_eq!(cell, "outposts `Bob`s proxy` and `Edge'<br>`set.yaml:3:1`");
        assert_eq!(md_escape("two\nlines `x\ny`"), "two<br>lines `x y`");
        // A run of backticks pairs only with one as long in Markdown: made quotes, the text
        // around stays escaped.
        assert_eq!(
            md_escape("```<img src=x>` and ``<b>``"),
            "'''&lt;img src=x&gt;' and ''&lt;b&gt;''"
        );
        // A carriage return ends a row as a line feed does; a backslash cannot eat the `|`
        // escape; links, entities and mentions stay text.
        assert_eq!(md_escape("a\rb \\| c"), "a<br>b \\\\\\| c");
        assert_eq!(
            md_escape("![x](https://e) &#124; @org/team"),
            "!\\[x\\](`https://e`) &amp;#&#8203;124; @&#8203;org/team"
        );
        // Issue references and inline maths stay text; a reference in a code span is text.
        assert_eq!(
            md_escape("fixes #1, org/repo#2, GH-3 and gh-4 (not GH-x) $\\Huge x$ `#5`"),
            "fixes #&#8203;1, org/repo#&#8203;2, GH-&#8203;3 and gh-&#8203;4 (not GH-x) \
             &#36;\\\\Huge x&#36; `#5`"
        );
        // Emphasis and strikethrough too; in code they are text already.
        assert_eq!(
            md_escape("*Edge* _ldap_ ~~old~~ `a_b*`"),
            "\\*Edge\\* \\_ldap\\_ \\~\\~old\\~\\~ `a_b*`"
        );
        // In code, a backslash stays one; `|` is escaped.
        assert_eq!(super::md_code("a`b\\|c\rd"), "``a`b\\\\|c d``");
        // A Traefik rule is shown as it is deployed, backticks and all.
        assert_eq!(
            super::md_code("Host(`a.example.com`) && PathPrefix(`/x`)"),
            "``Host(`a.example.com`) && PathPrefix(`/x`)``"
        );
        assert_eq!(super::md_code("`a``"), "``` `a`` ```");
        assert_eq!(super::md_code(" a "), "`  a  `");
        assert_eq!(super::md_code(""), "` `");
        assert_eq!(md_escape("`C:\\x|y`"), "`C:\\x\\|y`");
    }

    /// Addresses GitHub would make links of are shown in code spans (an engine's address is
    /// rarely one a reader can open); punctuation after one stays outside, and one touching
    /// a code span is left as text (two backticks in a row would end that span elsewhere).
    #[test]
    fn addresses_in_markdown_cells_are_code_not_links() {
        assert_eq!(
            md_escape("connect to http://127.0.0.1:2375: refused"),
            "connect to `http://127.0.0.1:2375`: refused"
        );
        assert_eq!(
            md_escape("(see https://x.example/a_b*c) or www.example.com."),
            "(see `https://x.example/a_b*c`) or `www.example.com`."
        );
        assert_eq!(
            md_escape("HTTPS://A|B, and `code` http://c"),
            "HTTPS&#58;//A\\|B, and `code` `http://c`"
        );
        assert_eq!(md_escape("`code`http://x"), "`code`http&#58;//x");
        // One left as text does not end the scan: the next is still a span.
        assert_eq!(
            md_escape("`c`http://x and http://y"),
            "`c`http&#58;//x and `http://y`"
        );
        assert_eq!(md_escape("http://x`code`"), "http&#58;//x`code`");
        // GitHub would link these inside a word, or of another scheme: never a `://` it sees.
        assert_eq!(md_escape("xhttp://y or www."), "xhttp&#58;//y or www.");
        assert_eq!(
            md_escape("Edge 2https://evil.example/login ftp://f"),
            "Edge 2https&#58;//evil.example/login ftp&#58;//f"
        );
    }
}
