//! The command line: which subcommand, with which arguments. Parses (with `lexopt`)
//! and dispatches; the work lives in `daemon`, `dev` and `state`. Which commands and
//! flags exist, and their help, is the table in `commands`; `help` renders the pages,
//! `completions` the shell scripts, `docs` the man page.
//!
//! Every subcommand ends in `Ok(())` (status 0) or a `Failure`, printed once here;
//! `error::CliError` is the one enum of exit statuses. `--help`/`-h` is understood
//! by every command and subcommand and prints its own page with status 0; an unknown
//! flag or command is named as unknown, with status 2.

pub mod client;
pub mod commands;
pub mod completions;
pub mod config;
pub mod daemon;
pub mod dev;
pub mod docs;
pub mod error;
pub mod help;
pub mod json_text;
pub mod sd_notify;
pub mod state;
pub mod target;
pub mod watch;
pub mod wipe_alloc;

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;

use crate::telemetry::logging;
use completions::Shell;
use config::{Config, ConfigError, Settings};
use error::{CliError, Failure};

/// Who reports a failure of the program itself, `serve` and `dev`'s arguments.
const WHO: &str = "plexd-nodeapi";

/// Runs the command line and returns the process exit status (`error::CliError`).
pub fn main_with_args(args: Vec<OsString>) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(failure) => failure.report(),
    }
}

fn run(args: Vec<OsString>) -> Result<(), Failure> {
    let mut parser = lexopt::Parser::from_args(args);
    let sub = match parser.next() {
        Ok(Some(Value(v))) => v.to_string_lossy().into_owned(),
        Ok(Some(Long("help") | Short('h'))) | Ok(None) => return print_help(&[]),
        Ok(Some(Long("version") | Short('V'))) => "version".to_owned(),
        Ok(Some(other)) => return Err(unknown_flag(&other, &[])),
        Err(e) => return Err(usage(e.to_string())),
    };
    match sub.as_str() {
        "serve" => serve(parser),
        "dev" => dev_command(parser),
        "state" => state::main(parser),
        "version" => version(parser),
        "completions" => completions_command(parser),
        "help" => help_command(parser),
        other => Err(usage(format!(
            "unknown command {other:?}; see `plexd-nodeapi --help`"
        ))),
    }
}

/// How an argument was typed (`--flag`, `-f`, `"value"`), for messages.
pub fn describe(arg: &lexopt::Arg) -> String {
    match arg {
        Long(l) => format!("--{l}"),
        Short(s) => format!("-{s}"),
        Value(v) => format!("{v:?}"),
    }
}

/// The message for an argument `command` does not know.
pub fn unknown_message(arg: &lexopt::Arg, command: &[&str]) -> String {
    let mut full = String::from("plexd-nodeapi");
    for c in command {
        full.push(' ');
        full.push_str(c);
    }
    match arg {
        Value(v) => format!("unexpected argument {v:?}; see `{full} --help`"),
        flag => format!("unknown flag {}; see `{full} --help`", describe(flag)),
    }
}

fn unknown_flag(arg: &lexopt::Arg, command: &[&str]) -> Failure {
    usage(unknown_message(arg, command))
}

fn usage(message: String) -> Failure {
    CliError::Usage(message).by(WHO)
}

/// Prints the help page of the command at `path`.
pub fn print_help(path: &[&str]) -> Result<(), Failure> {
    match help::page(path) {
        Some(text) => {
            print!("{text}");
            Ok(())
        }
        None => Err(usage(format!(
            "no such command {:?}; see `plexd-nodeapi --help`",
            path.join(" ")
        ))),
    }
}

/// Arguments for commands that take none but `--help`.
fn no_arguments(mut parser: lexopt::Parser, command: &[&str]) -> Result<bool, Failure> {
    match parser.next().map_err(|e| usage(e.to_string()))? {
        None => Ok(false),
        Some(Long("help") | Short('h')) => Ok(true),
        Some(other) => Err(unknown_flag(&other, command)),
    }
}

fn version(parser: lexopt::Parser) -> Result<(), Failure> {
    if no_arguments(parser, &["version"])? {
        return print_help(&["version"]);
    }
    println!("{}", version_text());
    Ok(())
}

/// `help [COMMAND [SUBCOMMAND]]`.
fn help_command(mut parser: lexopt::Parser) -> Result<(), Failure> {
    let mut words = Vec::new();
    while let Some(arg) = parser.next().map_err(|e| usage(e.to_string()))? {
        match arg {
            Value(v) => words.push(v.to_string_lossy().into_owned()),
            Long("help") | Short('h') => return print_help(&["help"]),
            other => return Err(unknown_flag(&other, &["help"])),
        }
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let path = help::command_path(&words);
    if path.len() < words.len() {
        return Err(usage(format!(
            "no such command {:?}; see `plexd-nodeapi --help`",
            words.join(" ")
        )));
    }
    print_help(&path)
}

/// `completions bash|zsh|fish`.
fn completions_command(mut parser: lexopt::Parser) -> Result<(), Failure> {
    let mut shell = None;
    while let Some(arg) = parser.next().map_err(|e| usage(e.to_string()))? {
        match arg {
            Long("help") | Short('h') => return print_help(&["completions"]),
            Value(v) if shell.is_none() => {
                let name = v.to_string_lossy().into_owned();
                shell = Some(Shell::parse(&name).ok_or_else(|| {
                    usage(format!(
                        "completions: unknown shell {name:?}; use bash, zsh or fish"
                    ))
                })?);
            }
            other => return Err(unknown_flag(&other, &["completions"])),
        }
    }
    let shell =
        shell.ok_or_else(|| usage("completions: which shell? bash, zsh or fish".to_owned()))?;
    let script = shell.shipped().ok_or_else(|| {
        CliError::Failed("this build carries no completion scripts".into()).by(WHO)
    })?;
    print!("{script}");
    Ok(())
}

/// What `version` prints: the version, then one `name: value` line each.
pub fn version_text() -> String {
    let or_unknown = |v: Option<&'static str>| v.filter(|v| !v.is_empty()).unwrap_or("unknown");
    format!(
        "plexd-nodeapi {}\nrevision: {}\ntarget:   {}\nprofile:  {}\nbuilt:    {}\nfeatures: unix-socket, tcp-bearer, secret-auth, tls-rustls, gzip, signed-events, socket-activation, sd-notify, journald",
        env!("CARGO_PKG_VERSION"),
        or_unknown(option_env!("PLEXD_NODEAPI_GIT_REVISION")),
        or_unknown(option_env!("PLEXD_NODEAPI_TARGET")),
        or_unknown(option_env!("PLEXD_NODEAPI_PROFILE")),
        or_unknown(option_env!("PLEXD_NODEAPI_BUILD_DATE")),
    )
}

/// What the `serve` arguments ask for.
pub enum ServeArgs {
    /// `--help`.
    Help,
    Run(Box<Settings>),
}

/// Parses `serve`'s arguments into settings (flags over the config file). Which flags
/// exist and which take a value is the command table's (`commands::serve_flag`).
pub fn parse_serve(mut parser: lexopt::Parser) -> Result<ServeArgs, ConfigError> {
    let mut config_file: Option<PathBuf> = None;
    let mut flags = Settings::default();
    while let Some(arg) = parser
        .next()
        .map_err(|e| ConfigError::new("arguments", e.to_string()))?
    {
        let name = match arg {
            Long("help") | Short('h') => return Ok(ServeArgs::Help),
            Long(name) => name.to_owned(),
            other => {
                return Err(ConfigError::new(
                    "arguments",
                    unknown_message(&other, &["serve"]),
                ))
            }
        };
        let field = format!("--{name}");
        let Some(flag) = commands::serve_flag(&name) else {
            return Err(ConfigError::new(
                &field,
                "unknown flag; see `plexd-nodeapi serve --help`",
            ));
        };
        if flag.value.is_none() {
            flags.set_flag(&name, None)?;
            continue;
        }
        let value = parser
            .value()
            .map_err(|_| {
                ConfigError::new(
                    &field,
                    format!("missing value {}", flag.value.unwrap_or(""))
                        .trim_end()
                        .to_owned(),
                )
            })?
            .into_string()
            .map_err(|_| ConfigError::new(&field, "value is not UTF-8"))?;
        if name == "config" {
            config_file = Some(value.into());
        } else {
            flags.set_flag(&name, Some(value))?;
        }
    }
    let base = match config_file {
        Some(path) => Settings::from_file(&path)?,
        None => Settings::default(),
    };
    Ok(ServeArgs::Run(Box::new(base.overlaid_with(&flags))))
}

fn serve(parser: lexopt::Parser) -> Result<(), Failure> {
    let settings = match parse_serve(parser) {
        Ok(ServeArgs::Help) => return print_help(&["serve"]),
        Ok(ServeArgs::Run(settings)) => settings,
        Err(e) => return Err(CliError::from(e).by(WHO)),
    };
    let config = Config::from_settings(*settings).map_err(|e| CliError::from(e).by(WHO))?;
    logging::init(config.log_level);
    daemon::run(config).map_err(|e| {
        log::error!(error:% = e; "start-up failed");
        e.by(WHO)
    })
}

fn dev_command(mut parser: lexopt::Parser) -> Result<(), Failure> {
    let mut opts = dev::DevOptions::default();
    let missing = |flag: &str, what: &str| usage(format!("dev: {flag} needs a {what}"));
    while let Some(arg) = parser.next().map_err(|e| usage(e.to_string()))? {
        match arg {
            Long("socket") => {
                opts.socket = Some(
                    parser
                        .value()
                        .map_err(|_| missing("--socket", "PATH"))?
                        .into(),
                )
            }
            Long("data-dir") => {
                opts.data_dir = Some(
                    parser
                        .value()
                        .map_err(|_| missing("--data-dir", "DIR"))?
                        .into(),
                )
            }
            Long("http") => {
                // `--http=ADDR`, `--http ADDR` (a word that is not a flag) or `--http`.
                let value = match parser.optional_value() {
                    Some(v) => Some(v),
                    None => next_plain_word(&mut parser),
                };
                opts.http = Some(match value {
                    None => dev::HttpListen::Default,
                    Some(v) => {
                        let text = v.to_string_lossy().into_owned();
                        let addr = text.parse().map_err(|_| {
                            usage(format!(
                                "dev: --http {text:?} is not an address (host:port)"
                            ))
                        })?;
                        dev::HttpListen::At(addr)
                    }
                });
            }
            Long("help") | Short('h') => return print_help(&["dev"]),
            other => return Err(unknown_flag(&other, &["dev"])),
        }
    }
    dev::run(opts)
}

/// The next argument if it is a plain word (not a flag), taken from the parser.
fn next_plain_word(parser: &mut lexopt::Parser) -> Option<OsString> {
    let mut raw = parser.try_raw_args()?;
    let next = raw.peek()?;
    if next.to_string_lossy().starts_with('-') {
        return None;
    }
    raw.next()
}
