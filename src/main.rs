//! The `outpostctl` binary: parse, run, exit. Everything else is in the library.

use std::io::IsTerminal;

use outpostctl::cli::{Cli, ColorChoice, Command};
use outpostctl::commands::{self, Printer};
use outpostctl::render::Style;

fn main() {
    use clap::{CommandFactory, FromArgMatches};
    // clap's own errors and help follow `--color` too, read before the rest is parsed.
    let cli = match Cli::command()
        // `args_os`: an argument that is not UTF-8 (a Latin-1 file name) is a path like any
        // other (`args` panics on it).
        .color(clap_color(
            std::env::args_os().map(|a| a.to_string_lossy().into_owned()),
        ))
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let color = |tty: bool| match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => tty && !no_color,
    };
    let stderr_tty = std::io::stderr().is_terminal();
    let printer = Printer {
        style: Style {
            color: color(stderr_tty),
            width: terminal_width(),
        },
        stdout_color: color(std::io::stdout().is_terminal()),
    };
    let exit = match cli.command {
        Command::Validate { paths, format } => commands::validate::run(&printer, &paths, format),
        // Interrupted, plan and status stop at once (dropping their engines removes any
        // temporary ssh key); apply finishes the actions in flight first.
        Command::Plan(args) => block_on(async {
            commands::install_reader_signal_handler();
            tokio::select! {
                exit = commands::plan::run(&printer, &args) => exit,
                _ = commands::until_interrupted() => commands::Exit::Failure,
            }
        }),
        Command::Apply(args) => block_on(async {
            commands::install_signal_handler();
            commands::apply::run(&printer, &args).await
        }),
        Command::Status {
            paths,
            format,
            detailed_exitcode,
        } => block_on(async {
            commands::install_reader_signal_handler();
            tokio::select! {
                exit = commands::status::run(&printer, &paths, format, detailed_exitcode) => exit,
                _ = commands::until_interrupted() => commands::Exit::Failure,
            }
        }),
        Command::Watch(args) => {
            let rt = runtime();
            let code = rt.block_on(commands::watch::run(&args));
            // Shutting the runtime down drops the event tasks the watch aborted: their engines
            // close ssh sessions and remove the private key directory (`exit` runs no
            // destructors). Bounded, so a stuck session cannot keep the process alive.
            rt.shutdown_timeout(std::time::Duration::from_secs(10));
            // A session still not dropped then leaves no key behind.
            outpostctl::engine::ssh::remove_private_dirs();
            std::process::exit(code)
        }
        Command::Schema => commands::schema::run(&printer),
        Command::Completions { shell } => commands::completions::run(&printer, shell),
    };
    std::process::exit(exit.code());
}

/// The width diagnostics are laid out for: `COLUMNS`, within what miette can indent into.
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(40, 1000)
}

/// Runs a one-shot command. What is still in flight when it returns (an engine being connected
/// to for a set that turned out invalid, see `commands::plan_now`) is dropped within a bound,
/// as for the watch: dropping an ssh engine closes its session and removes its key directory.
fn block_on<F: std::future::Future>(command: F) -> F::Output {
    let rt = runtime();
    let out = rt.block_on(command);
    rt.shutdown_timeout(std::time::Duration::from_secs(10));
    // A session still not dropped then leaves no key behind (`exit` runs no destructor).
    outpostctl::engine::ssh::remove_private_dirs();
    out
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// The colour choice `--color` makes on the command line (its last one), for clap's own output
/// (errors, help): read from the raw arguments, as it must apply before they are parsed.
fn clap_color(args: impl Iterator<Item = String>) -> clap::ColorChoice {
    let args: Vec<String> = args.collect();
    let mut said = None;
    for (i, a) in args.iter().enumerate() {
        if a == "--" {
            break;
        }
        if let Some(v) = a.strip_prefix("--color=") {
            said = Some(v.to_string());
        } else if a == "--color" {
            said = args.get(i + 1).cloned();
        }
    }
    match said.as_deref() {
        Some("always") => clap::ColorChoice::Always,
        Some("never") => clap::ColorChoice::Never,
        _ => clap::ColorChoice::Auto,
    }
}
