//! `plexd-nodeapi state …`: the daemon's API for shell scripts. Pretty JSON on stdout
//! (or the bare value with `--raw`), one-line errors on stderr, and exit statuses a
//! script can branch on (`cli::error`: 1 another error status, 2 usage, 3 not found,
//! 4 version conflict, 5 daemon unreachable, 6 access denied, 7 unhealthy). Which
//! options each subcommand takes is the command table's (`commands`); entries are
//! addressed as `target` says. `state watch` is its own module (`watch`).

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;

use lexopt::prelude::*;
use serde_json::value::RawValue;

use super::client::{ClientError, ClientResponse, LocalClient};
use super::commands::{self, Command as Page};
use super::config::DEFAULT_SOCKET;
use super::error::{CliError, Failure};
use super::json_text::print_pretty;
use super::target::{raw_text, Address, Kind};
use super::watch::{self, Sink, Target};
use crate::encoding::percent_encode_segment;

/// Who reports a failure of `state`.
const WHO: &str = "plexd-nodeapi state";

enum Command {
    Summary,
    Get(Address),
    Put {
        key: String,
        data: String,
        content_type: Option<String>,
    },
    Delete {
        key: String,
    },
    Watch {
        target: Target,
        command: Vec<OsString>,
    },
    Health {
        ready: bool,
    },
}

/// What was typed: the options (by long name) and the words.
#[derive(Default)]
struct Typed {
    socket: Option<PathBuf>,
    options: Vec<(String, Option<String>)>,
    words: Vec<String>,
    help: bool,
}

impl Typed {
    fn value(&self, long: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| n == long)
            .and_then(|(_, v)| v.as_deref())
    }

    fn switch(&self, long: &str) -> bool {
        self.options.iter().any(|(n, _)| n == long)
    }
}

enum Parsed {
    Help(Vec<&'static str>),
    Run {
        socket: PathBuf,
        command: Command,
        raw: bool,
        etag: bool,
        headers: Vec<(&'static str, String)>,
    },
}

struct Usage(String);

/// The state option `--long` (or `-c`) of any subcommand, for knowing whether it takes
/// a value before the subcommand is known.
fn any_option(long: Option<&str>, short: Option<char>) -> Option<&'static commands::Opt> {
    let state = commands::find(&["state"])?;
    std::iter::once(state)
        .chain(state.subcommands.iter())
        .flat_map(Page::opts)
        .find(|o| long.is_some_and(|l| o.long == l) || (short.is_some() && o.short == short))
}

fn unknown(arg: &str, sub: Option<&str>) -> Usage {
    let page = sub.map_or("state".to_owned(), |s| format!("state {s}"));
    Usage(format!(
        "unknown flag {arg}; see `plexd-nodeapi {page} --help`"
    ))
}

fn typed(raw: Vec<OsString>) -> Result<Typed, Usage> {
    let mut parser = lexopt::Parser::from_args(raw);
    let mut t = Typed {
        socket: std::env::var_os("PLEXD_NODEAPI_SOCKET").map(PathBuf::from),
        ..Typed::default()
    };
    let err = |e: lexopt::Error| Usage(e.to_string());
    while let Some(arg) = parser.next().map_err(err)? {
        let (long, short) = match arg {
            Value(v) => {
                t.words.push(text(v)?);
                continue;
            }
            Long(l) => (Some(l.to_owned()), None),
            Short(c) => (None, Some(c)),
        };
        let shown = long.as_ref().map_or_else(
            || format!("-{}", short.unwrap_or('?')),
            |l| format!("--{l}"),
        );
        let Some(opt) = any_option(long.as_deref(), short) else {
            return Err(unknown(&shown, None));
        };
        let value = match opt.value {
            Some(placeholder) => {
                Some(text(parser.value().map_err(|_| {
                    Usage(format!("{shown} needs a value ({placeholder})"))
                })?)?)
            }
            None => None,
        };
        match opt.long {
            "help" => t.help = true,
            "socket" => t.socket = value.map(PathBuf::from),
            long => t.options.push((long.to_owned(), value)),
        }
    }
    Ok(t)
}

fn parse(mut outer: lexopt::Parser) -> Result<Parsed, Usage> {
    // Everything after the first `--` is `watch`'s COMMAND, never our options.
    let mut raw: Vec<OsString> = outer
        .raw_args()
        .map_err(|e| Usage(e.to_string()))?
        .collect();
    let after_dashes = match raw.iter().position(|a| a == "--") {
        Some(i) => {
            let rest = raw.split_off(i + 1);
            raw.pop();
            Some(rest)
        }
        None => None,
    };
    let t = typed(raw)?;
    let sub = t.words.first().map(String::as_str);
    let page = match sub {
        None => commands::find(&["state"]),
        Some(s) => commands::find(&["state", s]),
    };
    let Some(page) = page else {
        if t.help {
            return Ok(Parsed::Help(vec!["state"]));
        }
        return Err(Usage(format!(
            "unknown subcommand {:?}; see `plexd-nodeapi state --help`",
            sub.unwrap_or_default()
        )));
    };
    if t.help {
        let mut path = vec!["state"];
        path.extend(
            sub.and_then(|s| commands::find(&["state", s]))
                .map(|c| c.name),
        );
        return Ok(Parsed::Help(path));
    }
    // Every option given must be one of this subcommand's.
    for (long, _) in &t.options {
        if page.opt(long).is_none() {
            return Err(unknown(&format!("--{long}"), sub));
        }
    }
    let args = t.words.get(1..).unwrap_or_default();
    let need = |what: &str| Usage(format!("{}: {what}", sub.unwrap_or("state")));
    let command = match sub {
        None => Command::Summary,
        Some("get") => Command::Get(Address::parse(args).map_err(|m| need(&m))?),
        Some("put") => Command::Put {
            key: Address::report_key(args).map_err(|m| need(&m))?,
            data: t
                .value("data")
                .ok_or_else(|| need("--data VALUE is required"))?
                .to_owned(),
            content_type: t.value("content-type").map(str::to_owned),
        },
        Some("delete") => Command::Delete {
            key: Address::report_key(args).map_err(|m| need(&m))?,
        },
        Some("watch") => {
            let address = Address::parse(args).map_err(|m| need(&m))?;
            if t.switch("raw") && address.key.is_none() {
                return Err(need("--raw needs a KEY"));
            }
            let command = match after_dashes.clone() {
                Some(c) if c.is_empty() => return Err(need("nothing after --")),
                Some(c) => c,
                None => Vec::new(),
            };
            Command::Watch {
                target: Target::new(address),
                command,
            }
        }
        Some("health") => {
            if let Some(extra) = args.first() {
                return Err(need(&format!("unexpected argument {extra:?}")));
            }
            Command::Health {
                ready: t.switch("ready"),
            }
        }
        Some(other) => {
            return Err(Usage(format!(
                "unknown subcommand {other:?}; see `plexd-nodeapi state --help`"
            )))
        }
    };
    if sub.is_none() {
        if let Some(extra) = t.words.get(1) {
            return Err(Usage(format!("unexpected argument {extra:?}")));
        }
    }
    if after_dashes.is_some() && !matches!(command, Command::Watch { .. }) {
        return Err(Usage("only watch takes a command after --".into()));
    }
    let mut headers = Vec::new();
    for (header, long) in [("If-Match", "if-match"), ("If-None-Match", "if-none-match")] {
        if let Some(v) = t.value(long) {
            headers.push((header, v.to_owned()));
        }
    }
    let (raw, etag) = (t.switch("raw"), t.switch("etag"));
    Ok(Parsed::Run {
        socket: t.socket.unwrap_or_else(|| DEFAULT_SOCKET.into()),
        command,
        raw,
        etag,
        headers,
    })
}

fn text(v: OsString) -> Result<String, Usage> {
    v.into_string()
        .map_err(|_| Usage("arguments must be UTF-8".into()))
}

/// Reads `--data`: the value itself, `@FILE`, or `-` for stdin. Whether it came from a
/// file or stdin is returned too.
fn read_data(data: &str) -> Result<(String, bool), Usage> {
    if data == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Usage(format!("--data -: cannot read stdin: {e}")))?;
        return Ok((s, true));
    }
    if let Some(path) = data.strip_prefix('@') {
        return std::fs::read_to_string(path)
            .map(|s| (s, true))
            .map_err(|e| Usage(format!("--data @{path}: {e}")));
    }
    Ok((data.to_owned(), false))
}

/// Whether a content type's payload is JSON (`application/json`, `…+json`).
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json") || essence.ends_with("/json")
}

/// The body of a `put`: `--data` as JSON text exactly as given (numbers and key order
/// kept) for a JSON content type, else the text as a JSON string (one trailing newline
/// of a file or stdin dropped).
fn put_body(data: &str, content_type: &str) -> Result<String, Usage> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        content_type: &'a str,
        payload: &'a RawValue,
    }
    let (text, from_file) = read_data(data)?;
    let json = if is_json(content_type) {
        serde_json::from_str::<&RawValue>(text.trim()).map_err(|e| {
            Usage(format!(
                "--data is not valid JSON ({e}); for plain text give a --content-type such as text/plain"
            ))
        })?;
        text.trim().to_owned()
    } else {
        let text = match text.strip_suffix('\n') {
            Some(t) if from_file => t.strip_suffix('\r').unwrap_or(t),
            _ => text.as_str(),
        };
        serde_json::to_string(text).map_err(|e| Usage(e.to_string()))?
    };
    let payload: &RawValue =
        serde_json::from_str(&json).map_err(|e| Usage(format!("--data: {e}")))?;
    serde_json::to_string(&Body {
        content_type,
        payload,
    })
    .map_err(|e| Usage(e.to_string()))
}

pub fn main(parser: lexopt::Parser) -> Result<(), Failure> {
    let (socket, command, raw, etag, headers) = match parse(parser) {
        Ok(Parsed::Help(path)) => return super::print_help(&path),
        Ok(Parsed::Run {
            socket,
            command,
            raw,
            etag,
            headers,
        }) => (socket, command, raw, etag, headers),
        Err(Usage(m)) => return Err(CliError::Usage(m).by(WHO)),
    };
    let usage = |m: String| CliError::Usage(m).by(WHO);
    let client = LocalClient::new(&socket);
    let output = match &command {
        Command::Get(address) if raw => Output::Raw(address.kind, address.key.is_some()),
        _ if etag => Output::Etag,
        _ => Output::Pretty,
    };
    let (method, path, body) = match command {
        Command::Health { ready } => {
            let path = if ready {
                "/v1/health?ready"
            } else {
                "/v1/health"
            };
            return health(client.request("GET", path, &[], None), ready).map_err(|e| e.by(WHO));
        }
        Command::Watch { target, command } => {
            let sink = if command.is_empty() {
                Sink::Stdout { raw }
            } else {
                Sink::Command(command)
            };
            return watch::run(client, target, sink);
        }
        Command::Summary if raw => return Err(usage("--raw needs get KIND".into())),
        Command::Summary => ("GET", "/v1/state".to_owned(), None),
        Command::Get(address) => ("GET", address.path(), None),
        Command::Put {
            key,
            data,
            content_type,
        } => {
            let content_type = content_type.unwrap_or_else(|| "application/json".into());
            let body = put_body(&data, &content_type).map_err(|Usage(m)| usage(m))?;
            let path = format!("/v1/state/report/{}", percent_encode_segment(&key));
            ("PUT", path, Some(body))
        }
        Command::Delete { key } => {
            let path = format!("/v1/state/report/{}", percent_encode_segment(&key));
            ("DELETE", path, None)
        }
    };
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let result = client.request(method, &path, &headers, body.as_deref().map(str::as_bytes));
    report(result, output).map_err(|e| e.by(WHO))
}

/// How a successful answer is printed.
enum Output {
    Pretty,
    Raw(Kind, bool),
    Etag,
}

/// A failure status as the exit status scripts expect.
fn refused(response: &ClientResponse) -> CliError {
    CliError::Refused {
        status: response.status,
        message: response.error_message(),
    }
}

/// Prints a response the way scripts expect; a failure says which exit status it is.
fn report(result: Result<ClientResponse, ClientError>, output: Output) -> Result<(), CliError> {
    let response = result?;
    if !(200..300).contains(&response.status) {
        return Err(refused(&response));
    }
    match output {
        Output::Pretty if !response.body.is_empty() => print_pretty(&response.body),
        Output::Pretty => {}
        Output::Raw(kind, keyed) => match raw_text(kind, keyed, &response.body) {
            Some(text) if text.is_empty() => {}
            Some(text) => println!("{text}"),
            None => return Err(CliError::Failed("the answer has no value to print".into())),
        },
        Output::Etag => match response.header("etag") {
            Some(tag) => println!("{tag}"),
            None => return Err(CliError::Failed("the answer carries no ETag".into())),
        },
    }
    Ok(())
}

/// `state health`: the document, then the verdict (7 when degraded or not ready).
fn health(result: Result<ClientResponse, ClientError>, ready_only: bool) -> Result<(), CliError> {
    let response = result?;
    if !matches!(response.status, 200 | 503) || response.header("content-type").is_none() {
        return Err(refused(&response));
    }
    print_pretty(&response.body);
    let doc: serde_json::Value = serde_json::from_slice(&response.body)
        .map_err(|_| CliError::Failed("the health document is not JSON".into()))?;
    let ready = doc["ready"].as_bool() == Some(true) && response.status == 200;
    if !ready {
        return Err(CliError::Unhealthy("not ready".into()));
    }
    if !ready_only && doc["status"] != "ok" {
        let why = doc["control_plane"]["last_error"]
            .as_str()
            .map_or(String::new(), |e| format!(": {e}"));
        return Err(CliError::Unhealthy(format!(
            "{}{why}",
            doc["status"].as_str().unwrap_or("unhealthy")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.x+json",
        ] {
            assert!(is_json(ct), "{ct}");
        }
        for ct in ["text/plain", "application/octet-stream", ""] {
            assert!(!is_json(ct), "{ct}");
        }
        let body = |data, ct| put_body(data, ct).ok();
        assert_eq!(
            body("healthy", "text/plain").as_deref(),
            Some(r#"{"content_type":"text/plain","payload":"healthy"}"#)
        );
        assert_eq!(
            body(" {\"b\": 1.0, \"a\": 1e3}\n", "application/json").as_deref(),
            Some(r#"{"content_type":"application/json","payload":{"b": 1.0, "a": 1e3}}"#)
        );
        assert!(body("healthy", "application/json").is_none());
    }
}
