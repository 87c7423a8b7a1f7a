//! `plexd-nodeapi state …`: the daemon's API for shell scripts. Pretty JSON on stdout,
//! one-line errors on stderr, and exit statuses a script can branch on (`cli::error`:
//! 1 another error status, 2 usage, 3 not found, 4 version conflict, 5 daemon
//! unreachable, 6 access denied). `state watch` is its own module (`watch`).

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;

use lexopt::prelude::*;

use super::client::{ClientError, ClientResponse, LocalClient};
use super::config::DEFAULT_SOCKET;
use super::error::{CliError, Failure};
use super::json_text::print_pretty;
use super::watch::{self, Sink, Target};
use crate::encoding::percent_encode_segment;

/// Who reports a failure of `state`.
const WHO: &str = "plexd-nodeapi state";

pub const STATE_USAGE: &str = "\
usage: plexd-nodeapi state [--socket PATH] [SUBCOMMAND]

    (no subcommand)                      the summary: metadata, data, secret and report keys
    get metadata|data|report|secret KEY  one entry (without KEY: the list)
    put KEY --data JSON [--content-type T] [--if-match N]
                                         write report KEY (--data @FILE or --data - reads a file or stdin)
    delete KEY                           delete report KEY
    watch KIND[/KEY] [-- COMMAND ARGS...]
                                         follow metadata|data|report|secrets[/KEY]: print each
                                         new version as one JSON line, or run COMMAND with it on
                                         stdin and PLEXD_INDEX set; the current value comes first;
                                         a missing KEY is waited for; Ctrl-C stops (status 0)

The socket defaults to $PLEXD_NODEAPI_SOCKET, else /var/run/plexd/api.sock.
Exit status: 0 ok, 1 other error, 2 usage, 3 not found, 4 conflict, 5 daemon unreachable, 6 denied.
";

enum Command {
    Summary,
    Get {
        kind: String,
        key: Option<String>,
    },
    Put {
        key: String,
        data: String,
        content_type: String,
        if_match: Option<String>,
    },
    Delete {
        key: String,
    },
    Watch {
        target: Target,
        command: Vec<OsString>,
    },
}

struct Usage(String);

fn parse(mut outer: lexopt::Parser) -> Result<(PathBuf, Command), Usage> {
    // Everything after the first `--` is `watch`'s COMMAND, never our options.
    let mut raw: Vec<OsString> = outer
        .raw_args()
        .map_err(|e| Usage(e.to_string()))?
        .collect();
    let mut after_dashes = match raw.iter().position(|a| a == "--") {
        Some(i) => {
            let rest = raw.split_off(i + 1);
            raw.pop();
            Some(rest)
        }
        None => None,
    };
    let mut parser = lexopt::Parser::from_args(raw);
    let mut socket: Option<PathBuf> = std::env::var_os("PLEXD_NODEAPI_SOCKET").map(PathBuf::from);
    let mut positional: Vec<String> = Vec::new();
    let mut data = None;
    let mut content_type = None;
    let mut if_match = None;
    let err = |e: lexopt::Error| Usage(e.to_string());
    while let Some(arg) = parser.next().map_err(err)? {
        match arg {
            Long("socket") => socket = Some(parser.value().map_err(err)?.into()),
            Long("data") => data = Some(text(parser.value().map_err(err)?)?),
            Long("content-type") => content_type = Some(text(parser.value().map_err(err)?)?),
            Long("if-match") => if_match = Some(text(parser.value().map_err(err)?)?),
            Long("help") | Short('h') => return Err(Usage(String::new())),
            Value(v) => positional.push(text(v)?),
            other => return Err(Usage(format!("unexpected {other:?}"))),
        }
    }
    let socket = socket.unwrap_or_else(|| DEFAULT_SOCKET.into());
    let mut words = positional.into_iter();
    let command = match words.next().as_deref() {
        None => Command::Summary,
        Some("get") => {
            let kind = words
                .next()
                .ok_or_else(|| Usage("get: which kind? metadata|data|report|secret".into()))?;
            if !matches!(
                kind.as_str(),
                "metadata" | "data" | "report" | "secret" | "secrets"
            ) {
                return Err(Usage(format!("get: unknown kind {kind:?}")));
            }
            Command::Get {
                kind,
                key: words.next(),
            }
        }
        Some("put") => {
            let key = words
                .next()
                .ok_or_else(|| Usage("put: missing KEY".into()))?;
            let data = data.ok_or_else(|| Usage("put: --data JSON is required".into()))?;
            Command::Put {
                key,
                data,
                content_type: content_type.unwrap_or_else(|| "application/json".into()),
                if_match,
            }
        }
        Some("delete") => Command::Delete {
            key: words
                .next()
                .ok_or_else(|| Usage("delete: missing KEY".into()))?,
        },
        Some("watch") => {
            let spec = words
                .next()
                .ok_or_else(|| Usage("watch: what? metadata|data|report|secrets[/KEY]".into()))?;
            let target = Target::parse(&spec).map_err(Usage)?;
            let command = match after_dashes.take() {
                Some(c) if c.is_empty() => return Err(Usage("watch: nothing after --".into())),
                Some(c) => c,
                None => Vec::new(),
            };
            Command::Watch { target, command }
        }
        Some(other) => return Err(Usage(format!("unknown subcommand {other:?}"))),
    };
    if after_dashes.is_some() {
        return Err(Usage("only watch takes a command after --".into()));
    }
    if let Some(extra) = words.next() {
        return Err(Usage(format!("unexpected argument {extra:?}")));
    }
    Ok((socket, command))
}

fn text(v: std::ffi::OsString) -> Result<String, Usage> {
    v.into_string()
        .map_err(|_| Usage("arguments must be UTF-8".into()))
}

/// Reads `--data`: literal JSON, `@FILE`, or `-` for stdin.
fn read_data(data: &str) -> Result<String, Usage> {
    if data == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Usage(format!("--data -: cannot read stdin: {e}")))?;
        return Ok(s);
    }
    if let Some(path) = data.strip_prefix('@') {
        return std::fs::read_to_string(path).map_err(|e| Usage(format!("--data @{path}: {e}")));
    }
    Ok(data.to_owned())
}

pub fn main(parser: lexopt::Parser) -> Result<(), Failure> {
    let (socket, command) = match parse(parser) {
        Ok(p) => p,
        Err(Usage(m)) if m.is_empty() => {
            print!("{STATE_USAGE}");
            return Ok(());
        }
        Err(Usage(m)) => return Err(CliError::Usage(m).by(WHO)),
    };
    let client = LocalClient::new(&socket);
    let result = match command {
        Command::Summary => client.request("GET", "/v1/state", &[], None),
        Command::Get { kind, key } => {
            let kind = if kind == "secret" {
                "secrets"
            } else {
                kind.as_str()
            };
            let path = match key {
                Some(k) => format!("/v1/state/{kind}/{}", percent_encode_segment(&k)),
                None => format!("/v1/state/{kind}"),
            };
            client.request("GET", &path, &[], None)
        }
        Command::Put {
            key,
            data,
            content_type,
            if_match,
        } => {
            let data = read_data(&data).map_err(|Usage(m)| CliError::Usage(m).by(WHO))?;
            let payload: serde_json::Value = serde_json::from_str(&data)
                .map_err(|e| CliError::Usage(format!("--data is not valid JSON: {e}")).by(WHO))?;
            let body =
                serde_json::json!({ "content_type": content_type, "payload": payload }).to_string();
            let mut headers = Vec::new();
            if let Some(v) = &if_match {
                headers.push(("If-Match", v.as_str()));
            }
            let path = format!("/v1/state/report/{}", percent_encode_segment(&key));
            client.request("PUT", &path, &headers, Some(body.as_bytes()))
        }
        Command::Delete { key } => {
            let path = format!("/v1/state/report/{}", percent_encode_segment(&key));
            client.request("DELETE", &path, &[], None)
        }
        Command::Watch { target, command } => {
            let sink = if command.is_empty() {
                Sink::Stdout
            } else {
                Sink::Command(command)
            };
            return watch::run(client, target, sink);
        }
    };
    report(result).map_err(|e| e.by(WHO))
}

/// Prints a response the way scripts expect; a failure says which exit status it is.
fn report(result: Result<ClientResponse, ClientError>) -> Result<(), CliError> {
    let response = result?;
    if !(200..300).contains(&response.status) {
        return Err(CliError::Refused {
            status: response.status,
            message: response.error_message(),
        });
    }
    if !response.body.is_empty() {
        print_pretty(&response.body);
    }
    Ok(())
}
