//! One module per subcommand: each wires the stages together and writes through `Printer`.

pub mod completions;
pub mod schema;
pub mod validate;

use std::io::Write;

use crate::render::Style;

/// Every write of a command goes through here, so output streams and styling are decided
/// once.
pub struct Printer {
    pub style: Style,
    pub stdout_color: bool,
}

impl Printer {
    pub fn out(&self, text: &str) {
        let mut o = std::io::stdout().lock();
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = o.write_all(text.as_bytes());
        let _ = o.flush();
    }

    pub fn err(&self, text: &str) {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(text.as_bytes());
        let _ = e.flush();
    }
}

/// What a command asks `main` to exit with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    Failure,
    Changes,
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Changes => 2,
        }
    }
}
