//! `outpostctl completions SHELL`.

use clap::CommandFactory;

use super::{Exit, Printer};
use crate::cli::Cli;

pub fn run(p: &Printer, shell: clap_complete::Shell) -> Exit {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "outpostctl", &mut buf);
    p.out(&String::from_utf8_lossy(&buf));
    Exit::Success
}
