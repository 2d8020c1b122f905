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
