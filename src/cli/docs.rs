//! Documents generated from the command table (`commands`) for outside the binary: the
//! man page `plexd-nodeapi.1` (roff, man(7) macros) and the README's table of `serve`
//! flags. `make docs` writes them (`examples/docs.rs`) and a test fails when the
//! committed copies differ, so the page, the table, the `--help` pages and the
//! parser cannot drift apart. The daemon never calls this module.

use std::fmt::Write as _;

use super::commands::{self, Command, Default, Opt, PROGRAM};

/// Where the man page lives in the repository.
pub const MAN_PAGE_FILE: &str = "contrib/man/plexd-nodeapi.1";
/// The comments around the flag table in README.md.
pub const TABLE_BEGIN: &str =
    "<!-- serve flags: generated from src/cli/commands.rs by `make docs` -->";
pub const TABLE_END: &str = "<!-- end of serve flags -->";

/// The README text between the markers, if it has them.
pub fn flag_table_in(readme: &str) -> Option<&str> {
    let start = readme.find(TABLE_BEGIN)? + TABLE_BEGIN.len();
    let end = start + readme[start..].find(TABLE_END)?;
    Some(readme[start..end].trim_start_matches('\n'))
}

/// `readme` with the generated table between the markers.
pub fn with_flag_table(readme: &str) -> Option<String> {
    let start = readme.find(TABLE_BEGIN)? + TABLE_BEGIN.len();
    let end = start + readme[start..].find(TABLE_END)?;
    Some(format!(
        "{}\n{}{}",
        &readme[..start],
        readme_flag_table(),
        &readme[end..]
    ))
}

/// The README's `serve` flag table (Markdown), between its marker comments.
pub fn readme_flag_table() -> String {
    let mut out = String::from("| flag | default | meaning |\n|---|---|---|\n");
    for o in commands::serve_flags().filter(|o| o.long != "help") {
        let name = match o.value {
            Some(v) => format!("`--{} {v}`", o.long),
            None => format!("`--{}`", o.long),
        };
        let default = match o.default {
            Default::None if o.value.is_none() => "off".to_owned(),
            Default::None => "—".to_owned(),
            Default::Required => "required".to_owned(),
            Default::Value(v) => format!("`{v}`"),
            Default::Text(t) => t.to_owned(),
        };
        let _ = writeln!(out, "| {name} | {default} | {} |", o.help);
    }
    out
}

/// Escapes text for roff: backslashes, hyphens (so they stay ASCII hyphens in
/// copied commands), characters beyond ASCII and a leading control character.
fn roff(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\e"),
            '-' => escaped.push_str("\\-"),
            c if c.is_ascii() => escaped.push(c),
            c => {
                let _ = write!(escaped, "\\[u{:04X}]", c as u32);
            }
        }
    }
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

fn roff_option(o: &Opt) -> String {
    let mut label = String::new();
    if let Some(c) = o.short {
        let _ = write!(label, "\\fB\\-{c}\\fR, ");
    }
    let _ = write!(label, "\\fB\\-\\-{}\\fR", roff(o.long));
    if let Some(v) = o.value {
        let _ = write!(label, " \\fI{}\\fR", roff(v));
    }
    label
}

fn paragraphs(out: &mut String, text: &str) {
    for para in text.split("\n\n").filter(|p| !p.is_empty()) {
        if para.contains('\n') {
            out.push_str(".PP\n.nf\n.RS 4\n");
            for line in para.lines() {
                let _ = writeln!(out, "{}", roff(line));
            }
            out.push_str(".RE\n.fi\n");
        } else {
            let _ = writeln!(out, ".PP\n{}", roff(para));
        }
    }
}

fn options(out: &mut String, cmd: &Command) {
    for section in cmd.sections {
        if cmd.sections.len() > 1 {
            let _ = writeln!(out, ".PP\n\\fI{}\\fR", roff(section.title));
        }
        for o in section.opts {
            let mut help = o.help.to_owned();
            match o.default {
                Default::None => {}
                Default::Required => help.push_str(" (required)"),
                Default::Value(v) | Default::Text(v) => {
                    let _ = write!(help, " [default: {v}]");
                }
            }
            let _ = writeln!(out, ".TP\n{}\n{}", roff_option(o), roff(&help));
        }
    }
}

fn command(out: &mut String, path: &str, cmd: &Command) {
    for u in cmd.usage {
        let _ = writeln!(out, ".SS \"{}\"", roff(format!("{path} {u}").trim_end()));
    }
    let _ = writeln!(out, ".PP\n{}", roff(&capitalised(cmd.about)));
    paragraphs(out, cmd.text);
    options(out, cmd);
    for sub in cmd.subcommands {
        command(out, &format!("{path} {}", sub.name), sub);
    }
}

fn capitalised(text: &str) -> String {
    let mut c = text.chars();
    match c.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), c.as_str()),
        None => String::new(),
    }
}

/// The man page `plexd-nodeapi.1`.
pub fn man_page() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        ".\\\" Generated from src/cli/commands.rs by `make docs`; do not edit.\n\
         .TH PLEXD\\-NODEAPI 1 \"\" \"plexd\\-nodeapi {}\" \"User Commands\"\n\
         .SH NAME\nplexd\\-nodeapi \\- {}\n.SH SYNOPSIS",
        env!("CARGO_PKG_VERSION"),
        roff(PROGRAM.about)
    );
    for c in PROGRAM.subcommands.iter().filter(|c| c.name != "help") {
        let _ = writeln!(out, ".B plexd\\-nodeapi {}", roff(c.name));
        if let Some(usage) = c.usage.first().filter(|u| !u.is_empty()) {
            let _ = writeln!(out, "{}", roff(usage));
        }
        out.push_str(".br\n");
    }
    out.push_str(".SH DESCRIPTION\n");
    paragraphs(&mut out, PROGRAM.text);
    options(&mut out, &PROGRAM);
    out.push_str(".SH COMMANDS\n");
    for c in PROGRAM.subcommands.iter().filter(|c| c.name != "help") {
        command(&mut out, &format!("plexd-nodeapi {}", c.name), c);
    }
    out.push_str(".SH EXIT STATUS\n");
    for (code, meaning) in commands::EXIT_STATUS {
        let _ = writeln!(out, ".TP\n\\fB{code}\\fR\n{}", roff(meaning));
    }
    out.push_str(".SH ENVIRONMENT\n");
    for (name, meaning) in commands::ENVIRONMENT {
        let _ = writeln!(out, ".TP\n\\fB{}\\fR\n{}", roff(name), roff(meaning));
    }
    out.push_str(
        ".SH FILES\n\
         .TP\n/etc/plexd/nodeapi.json\nthe configuration file the systemd unit passes to \\fBserve \\-\\-config\\fR\n\
         .TP\n/etc/plexd/http\\-token\nthe bearer token of the TCP listener (created by the package)\n\
         .TP\n/var/lib/plexd/\nthe data folder: identity.json and node_secret_key (written by plexd), the cache in state/\n\
         .TP\n/var/run/plexd/api.sock\nthe Unix socket\n\
         .SH SEE ALSO\n\
         The README (/usr/share/doc/plexd\\-nodeapi/README.md) for the local API, the limits, \
         reports and their preconditions; the OpenAPI document \
         (/usr/share/doc/plexd\\-nodeapi/openapi.json).\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roff_escapes() {
        assert_eq!(roff("--data-dir"), "\\-\\-data\\-dir");
        assert_eq!(roff(".hidden"), "\\&.hidden");
        assert_eq!(roff("a\\b"), "a\\eb");
        assert_eq!(roff("2 × cores…"), "2 \\[u00D7] cores\\[u2026]");
    }

    #[test]
    fn table_has_one_row_per_serve_flag() {
        let table = readme_flag_table();
        let rows = table.lines().count() - 2;
        assert_eq!(rows, commands::serve_flags().count() - 1);
        assert!(table.contains("| `--data-dir DIR` | required |"));
        assert!(table.contains("| `--http` | off |"));
    }
}
