//! The command tree in one table: every command and subcommand with its usage lines,
//! description and options, and `serve`'s flags with their defaults. The `--help`
//! pages (`help`), the shell completions (`completions`), the man page and the README's
//! flag table (`docs`) are all rendered from it, and the parsers ask it which flags
//! exist and which take a value, so a flag cannot be accepted without being documented.
//! A test holds the table against `config::Settings` (every config key has a flag here
//! and every flag here is one the settings accept).
//!
//! Texts are plain (no Markdown): one line per option, paragraphs separated by a blank
//! line; renderers wrap them. This module holds data only; it parses nothing.

/// An option of a command (`--name VALUE` or a switch).
#[derive(Debug)]
pub struct Opt {
    pub long: &'static str,
    pub short: Option<char>,
    /// The value's placeholder (`DIR`, `DUR`…); `None` for a switch.
    pub value: Option<&'static str>,
    pub default: Default,
    pub help: &'static str,
}

/// What an option is when it is not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// Nothing is said (off, or not applicable).
    None,
    /// The option must be given.
    Required,
    /// A literal value, written in code font in the README (`5s`).
    Value(&'static str),
    /// A description (`node_id from DIR/identity.json`).
    Text(&'static str),
}

/// A group of options under a heading.
#[derive(Debug)]
pub struct Section {
    pub title: &'static str,
    pub opts: &'static [Opt],
}

/// A command or subcommand.
#[derive(Debug)]
pub struct Command {
    pub name: &'static str,
    /// One line: what it does.
    pub about: &'static str,
    /// Usage lines, each after the command's full name (`plexd-nodeapi state get`).
    pub usage: &'static [&'static str],
    /// Paragraphs, separated by blank lines.
    pub text: &'static str,
    pub sections: &'static [Section],
    /// The words the first positional argument may be (completions offer them).
    pub words: &'static [&'static str],
    pub subcommands: &'static [Command],
}

impl Command {
    /// The subcommand called `name`.
    pub fn sub(&self, name: &str) -> Option<&'static Command> {
        self.subcommands.iter().find(|c| c.name == name)
    }

    /// Every option of the command, section after section.
    pub fn opts(&self) -> impl Iterator<Item = &'static Opt> {
        self.sections.iter().flat_map(|s| s.opts.iter())
    }

    /// The option `--long`.
    pub fn opt(&self, long: &str) -> Option<&'static Opt> {
        self.opts().find(|o| o.long == long)
    }
}

const fn opt(long: &'static str, value: Option<&'static str>, help: &'static str) -> Opt {
    Opt {
        long,
        short: None,
        value,
        default: Default::None,
        help,
    }
}

const fn flag(
    long: &'static str,
    value: &'static str,
    default: Default,
    help: &'static str,
) -> Opt {
    Opt {
        long,
        short: None,
        value: Some(value),
        default,
        help,
    }
}

const HELP: Opt = Opt {
    long: "help",
    short: Some('h'),
    value: None,
    default: Default::None,
    help: "print this help and exit",
};

/// Where `state` finds the daemon.
const SOCKET: Opt = flag(
    "socket",
    "PATH",
    Default::Text("$PLEXD_NODEAPI_SOCKET, else /var/run/plexd/api.sock"),
    "the daemon's Unix socket (before or after the subcommand)",
);

const RAW: Opt = Opt {
    long: "raw",
    short: Some('r'),
    value: None,
    default: Default::None,
    help: "print the bare value for scripts: a metadata value, a secret value, a payload (a JSON string unquoted, anything else as compact JSON), or a list's keys one per line",
};

const ETAG: Opt = opt(
    "etag",
    None,
    "print only the answer's ETag (what --if-match takes later), not the entry",
);

const COMMON: &[Opt] = &[SOCKET, HELP];

/// The program's exit statuses, as the help pages and the man page list them
/// (`cli::error::CliError::exit_code` decides them).
pub const EXIT_STATUS: &[(u8, &str)] = &[
    (0, "success"),
    (1, "a runtime failure: a listener or the state folder cannot be used, the daemon answered with another error, a command cannot run"),
    (2, "usage or configuration error (nothing was bound or written)"),
    (3, "state: not found"),
    (4, "state: version conflict (a precondition did not hold)"),
    (5, "state: the daemon is unreachable (no socket, refused, timed out)"),
    (6, "state: access denied (the socket's permissions, --secret-auth, a TCP token)"),
    (7, "state health: the daemon is degraded or not ready"),
];

/// Environment variables the program reads.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    ("PLEXD_NODEAPI_SOCKET", "the socket `state` talks to when --socket is not given"),
    ("PLEXD_NODEAPI_SSE_IDLE_TIMEOUT", "reconnect the control plane's event stream after this long without a byte (default 90s; for tests and unusual networks)"),
    ("JOURNAL_STREAM", "set by systemd: when it names stderr, log lines carry a syslog priority prefix (<3> … <7>) so journalctl -p works"),
];

/// `serve`'s flags: each is also a key of the JSON `--config` file, with `-` written as
/// `_` (except `--config` itself).
const SERVE_SECTIONS: &[Section] = &[
    Section {
        title: "Node and files",
        opts: &[
            flag("config", "FILE", Default::None, "read these settings from a JSON file (keys are the flag names with - written as _); flags win over the file"),
            flag("data-dir", "DIR", Default::Required, "the cache lives in DIR/state/; identity files are read from DIR; a missing folder is created (0700, with its parents), as plexd does"),
            flag("socket", "PATH", Default::Value("/var/run/plexd/api.sock"), "the Unix socket"),
            flag("node-id", "ID", Default::Text("node_id from DIR/identity.json"), "the node identifier"),
            flag("nsk-file", "PATH", Default::Text("DIR/node_secret_key"), "the 32-byte node secret key: raw bytes as plexd writes them, 44-char base64 or 64-char hex"),
        ],
    },
    Section {
        title: "Control plane",
        opts: &[
            flag("control-plane", "URL", Default::None, "https://… (http:// for loopback only); without it the cache is served offline: secrets answer 503, reports stay pending"),
            flag("cp-token-file", "PATH", Default::Text("the NSK file"), "bearer token for the control plane"),
            flag("signing-key-file", "PATH", Default::Text("DIR/signing_public_key if present"), "base64 Ed25519 key that signs control-plane events"),
            flag("ca-file", "PATH", Default::Text("system roots"), "extra PEM CA for the control plane"),
            flag("debounce", "DUR", Default::Value("5s"), "report sync debounce"),
            flag("reconcile-interval", "DUR", Default::Value("60s"), "full-state reconciliation period (at least 1s)"),
        ],
    },
    Section {
        title: "TCP listener and access",
        opts: &[
            opt("http", None, "enable the TCP listener on 127.0.0.1:9100"),
            flag("http-listen", "ADDR", Default::None, "enable the TCP listener on ADDR (host:port); a non-loopback address is warned about: secrets are served there behind the token, in clear text"),
            flag("http-token-file", "PATH", Default::None, "bearer token required on TCP (required with it): trimmed, non-empty, no spaces or control characters inside"),
            opt("secret-auth", None, "secret routes on the socket only for uid 0 and the group plexd-secrets (checked with the kernel's peer credentials); other peers see no secret names, versions or counts"),
            opt("allow-core-dumps", None, "keep the process dumpable, for debugging only: a core file or a debugger may then see secret values, tokens and the NSK"),
        ],
    },
    Section {
        title: "Limits and timeouts",
        opts: &[
            flag("max-connections", "N", Default::Value("8192"), "open connections, all listeners together"),
            flag("workers", "N", Default::Text("max(4, 2 × cores)"), "HTTP worker threads, one event loop each"),
            flag("upstream-workers", "N", Default::Value("4"), "threads for calls that wait on the control plane (secret fetches)"),
            flag("secret-timeout", "DUR", Default::Value("5s"), "longest a secret request waits for the control plane (at most 30s)"),
            flag("head-timeout", "DUR", Default::Value("10s"), "a request head must arrive within this"),
            flag("body-timeout", "DUR", Default::Value("10s"), "a request body must arrive within this, once its head is in"),
            flag("idle-timeout", "DUR", Default::Value("60s"), "an idle keep-alive connection is closed after this"),
            flag("max-body-memory", "SIZE", Default::Value("64MiB"), "request bodies held in memory at once, all connections together (at least 1MiB)"),
            flag("max-report-keys", "N", Default::Value("10000"), "report keys local writers may store (beyond: 507)"),
            flag("max-report-bytes", "SIZE", Default::Value("64MiB"), "bytes of report payloads local writers may store (beyond: 507)"),
            flag("shutdown-timeout", "DUR", Default::Value("5s"), "graceful shutdown bound"),
        ],
    },
    Section {
        title: "Kubernetes",
        opts: &[
            opt("kubernetes", None, "Kubernetes mode: mirror the state into a PlexdNodeState resource and Secrets, take reports from its status, authenticate workloads' ServiceAccount tokens; the flags below default to the in-cluster values"),
            flag("k8s-api-server", "URL", Default::Text("from KUBERNETES_SERVICE_HOST/PORT"), "the API server (https://HOST:PORT)"),
            flag("k8s-token-file", "PATH", Default::Text("the in-cluster token"), "the daemon's ServiceAccount token (the service-account folder's token file), re-read at least every minute and after a 401"),
            flag("k8s-ca-file", "PATH", Default::Text("the in-cluster ca.crt"), "the cluster CA, the only one trusted for the API server"),
            flag("k8s-namespace", "NS", Default::Text("the in-cluster namespace"), "where the resource and its Secrets live (the service account's namespace file, then POD_NAMESPACE)"),
            flag("k8s-node-name", "NAME", Default::Text("MY_NODE_NAME"), "the Kubernetes node, for the same-node check of callers' tokens"),
            flag("mesh-ip", "IP", Default::Text("mesh_ip from DIR/identity.json"), "the node's mesh address, written into the resource"),
            flag("k8s-token-audience", "AUD", Default::Value("plexd"), "the audience callers' tokens must carry on TCP; empty turns TokenReview off"),
        ],
    },
    Section {
        title: "Logging",
        opts: &[flag("log-level", "LEVEL", Default::Value("info"), "error, warn, info, debug or trace")],
    },
    Section {
        title: "Help",
        opts: &[HELP],
    },
];

const KINDS: &[&str] = &["metadata", "data", "report", "reports", "secret", "secrets"];

const STATE_GET: Command = Command {
    name: "get",
    about: "print one entry, or a list",
    usage: &["KIND [KEY] [--raw | --etag]", "KIND/KEY [--raw | --etag]"],
    text: "KIND is metadata, data, report or secret (reports and secrets work too). Without KEY it prints the list of that kind. KEY may contain / and any other character: it is percent-encoded for you, so metadata/region and metadata region name the same entry, and secret/db/password is the secret db/password.

The answer is printed as pretty JSON with numbers and strings exactly as the daemon sent them; --raw prints the bare value instead, --etag only the entry's ETag.",
    sections: &[Section {
        title: "Options",
        opts: &[RAW, ETAG, SOCKET, HELP],
    }],
    words: KINDS,
    subcommands: &[],
};

const STATE_PUT: Command = Command {
    name: "put",
    about: "write a report entry",
    usage: &[
        "KEY --data VALUE [--if-match TAG] [OPTIONS]",
        "KEY --data VALUE --if-none-match '*' [--etag]",
    ],
    text: "Writes report KEY (report/KEY works too) and prints the stored entry. VALUE is JSON, @FILE (read a file) or - (read stdin). With a --content-type that is not JSON (text/plain, …) VALUE is taken as plain text and stored as a JSON string, so --data healthy --content-type text/plain stores \"healthy\".

--if-match takes what a read printed in its ETag (a quoted revision, \"4294967302\"), * (only if the entry exists) or a version number as the seed's clients send it (0: only if it does not exist). --if-none-match '*' writes only if the entry does not exist yet. A condition that does not hold exits 4 and changes nothing.",
    sections: &[Section {
        title: "Options",
        opts: &[
            flag("data", "VALUE", Default::Required, "the payload: JSON, @FILE or - for stdin (plain text with a non-JSON --content-type)"),
            flag("content-type", "TYPE", Default::Value("application/json"), "the entry's content type"),
            flag("if-match", "TAG", Default::None, "write only if the entry is still at this ETag, exists (*), or has this version (0: does not exist)"),
            flag("if-none-match", "TAG", Default::None, "write only if the entry does not exist (*) or is not at this ETag"),
            ETAG,
            SOCKET,
            HELP,
        ],
    }],
    words: &[],
    subcommands: &[],
};

const STATE_DELETE: Command = Command {
    name: "delete",
    about: "delete a report entry",
    usage: &["KEY [--if-match TAG]"],
    text: "Deletes report KEY (report/KEY works too). With --if-match it deletes only the state you last read: the lock-release half of put --if-none-match '*'. A condition that does not hold exits 4 and deletes nothing; a missing entry exits 3.",
    sections: &[Section {
        title: "Options",
        opts: &[
            flag("if-match", "TAG", Default::None, "delete only if the entry is still at this ETag, exists (*), or has this version"),
            SOCKET,
            HELP,
        ],
    }],
    words: &[],
    subcommands: &[],
};

const STATE_WATCH: Command = Command {
    name: "watch",
    about: "print or act on every change of an entry or a list",
    usage: &[
        "KIND[/KEY] [--raw] [-- COMMAND ARGS...]",
        "KIND KEY [--raw] [-- COMMAND ARGS...]",
    ],
    text: "Prints the current value at once and then every new version, each as one line of compact JSON (the bare value with --raw, which needs a KEY). With -- COMMAND it runs COMMAND once per version instead, with the body on stdin and the index in $PLEXD_INDEX; a command that fails is reported and the watch goes on.

A key that does not exist yet is waited for; an unreachable daemon is retried with backoff; a denied one ends the watch (exit 6). A secret's value is fetched again whenever its version changes. Ctrl-C ends the watch with status 0.",
    sections: &[Section {
        title: "Options",
        opts: &[RAW, SOCKET, HELP],
    }],
    words: KINDS,
    subcommands: &[],
};

const STATE_HEALTH: Command = Command {
    name: "health",
    about: "print the daemon's health; exit 7 when degraded or not ready",
    usage: &["[--ready]"],
    text: "Prints /v1/health. Exits 0 when the status is ok and the daemon is ready, 7 when it is degraded (the control plane is unreachable or report syncs keep failing) or not ready. With --ready only readiness counts (the probe Kubernetes uses): a degraded daemon still serves its cache.",
    sections: &[Section {
        title: "Options",
        opts: &[
            opt("ready", None, "exit 0 once the daemon is ready, degraded or not"),
            SOCKET,
            HELP,
        ],
    }],
    words: &[],
    subcommands: &[],
};

const STATE: Command = Command {
    name: "state",
    about: "read and write the daemon's state from scripts",
    usage: &["[SUBCOMMAND] [--socket PATH]"],
    text: "Without a subcommand it prints the summary: metadata, data, secret and report keys. Pretty JSON on stdout with numbers and strings exactly as the daemon sent them, one-line errors on stderr, and exit statuses to branch on (see below).",
    sections: &[Section {
        title: "Options",
        opts: COMMON,
    }],
    words: &[],
    subcommands: &[STATE_GET, STATE_PUT, STATE_DELETE, STATE_WATCH, STATE_HEALTH],
};

const SERVE: Command = Command {
    name: "serve",
    about: "run the daemon",
    usage: &["--data-dir DIR [FLAGS]", "--config FILE [FLAGS]"],
    text: "Serves the node's state on the Unix socket (and, with --http or --http-listen, on TCP with a bearer token) until SIGTERM or SIGINT, then stops gracefully and exits 0. Every flag below except --config is also a key of the JSON config file, with - written as _ (data_dir, http_listen, secret_auth…); flags win over the file and unknown keys are refused.

Durations use Go syntax (300ms, 5s, 1m30s). Sizes are bytes or a number with KiB, MiB or GiB (K, M, G mean the same). An invalid configuration exits 2 with one line naming the field, before anything is bound or written; a listener that cannot be bound or a state folder that cannot be used exits 1.",
    sections: SERVE_SECTIONS,
    words: &[],
    subcommands: &[],
};

const DEV: Command = Command {
    name: "dev",
    about: "run the daemon against a built-in development control plane",
    usage: &["[--data-dir DIR] [--socket PATH] [--http [ADDR]]"],
    text: "Creates a data folder with an identity and a node secret key (once), starts the development control plane with demo state on a loopback port, starts the daemon against it and prints commands to paste. Runs as an ordinary user; Ctrl-C stops both. The control plane's admin API (under /admin/) changes its state: see the README.",
    sections: &[Section {
        title: "Options",
        opts: &[
            flag("data-dir", "DIR", Default::Value(".plexd-dev"), "the data folder"),
            flag("socket", "PATH", Default::Text("DIR/api.sock"), "the Unix socket"),
            Opt {
                long: "http",
                short: None,
                value: Some("[ADDR]"),
                default: Default::None,
                help: "also open the TCP listener, with a token generated into DIR/http-token; ADDR defaults to 127.0.0.1:9100 (another free port if that one is taken)",
            },
            HELP,
        ],
    }],
    words: &[],
    subcommands: &[],
};

const VERSION: Command = Command {
    name: "version",
    about: "print the version, git revision, target, profile, build date and features",
    usage: &[""],
    text: "",
    sections: &[Section {
        title: "Options",
        opts: &[HELP],
    }],
    words: &[],
    subcommands: &[],
};

const COMPLETIONS: Command = Command {
    name: "completions",
    about: "print a shell completion script",
    usage: &["bash|zsh|fish"],
    text:
        "Prints the completion script for the shell. Install it where the shell looks, for example:

plexd-nodeapi completions bash > /etc/bash_completion.d/plexd-nodeapi
plexd-nodeapi completions zsh > ~/.zfunc/_plexd-nodeapi  # fpath+=~/.zfunc
plexd-nodeapi completions fish > ~/.config/fish/completions/plexd-nodeapi.fish

make install puts them in place.",
    sections: &[Section {
        title: "Options",
        opts: &[HELP],
    }],
    words: &["bash", "zsh", "fish"],
    subcommands: &[],
};

const HELP_COMMAND: Command = Command {
    name: "help",
    about: "print the help of a command",
    usage: &["[COMMAND [SUBCOMMAND]]"],
    text: "",
    sections: &[Section {
        title: "Options",
        opts: &[HELP],
    }],
    words: &["serve", "dev", "state", "version", "completions"],
    subcommands: &[],
};

/// The program itself: the root of the tree.
pub static PROGRAM: Command = Command {
    name: "plexd-nodeapi",
    about: "the node-local state API of a Plexsphere mesh node",
    usage: &["COMMAND [OPTIONS]"],
    text: "Serves a node's metadata, data entries, secrets and report entries to local programs over HTTP/1.1 on a Unix socket, and optionally on a TCP port with a bearer token. Run plexd-nodeapi COMMAND --help for a command's options.",
    sections: &[Section {
        title: "Options",
        opts: &[
            HELP,
            Opt {
                long: "version",
                short: Some('V'),
                value: None,
                default: Default::None,
                help: "print the version and exit",
            },
        ],
    }],
    words: &[],
    subcommands: &[SERVE, DEV, STATE, VERSION, COMPLETIONS, HELP_COMMAND],
};

/// `serve`'s flags (every section).
pub fn serve_flags() -> impl Iterator<Item = &'static Opt> {
    serve().opts()
}

/// The `serve` command.
pub fn serve() -> &'static Command {
    &PROGRAM.subcommands[0]
}

/// The `serve` flag `--name`, if there is one.
pub fn serve_flag(name: &str) -> Option<&'static Opt> {
    serve_flags().find(|o| o.long == name)
}

/// Every command path, the program's own first: `[]`, `["serve"]`, `["state", "get"]`…
pub fn paths() -> Vec<Vec<&'static str>> {
    let mut out = vec![vec![]];
    for c in PROGRAM.subcommands {
        out.push(vec![c.name]);
        for s in c.subcommands {
            out.push(vec![c.name, s.name]);
        }
    }
    out
}

/// The command at `path` (`["state", "get"]`), if there is one.
pub fn find(path: &[&str]) -> Option<&'static Command> {
    let mut at: &'static Command = &PROGRAM;
    for name in path {
        at = at.sub(name)?;
    }
    Some(at)
}
