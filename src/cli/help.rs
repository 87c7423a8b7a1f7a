//! `--help` pages, rendered from the command table (`commands`) for a terminal: usage
//! lines, the description wrapped to 80 columns, options with their defaults,
//! subcommands, and the exit statuses where they matter. It prints nothing itself and
//! knows no parser; the man page and the README table are `docs`.

use std::fmt::Write as _;

use super::commands::{self, Command, Default, Opt, PROGRAM};

/// Width the pages are wrapped to.
const WIDTH: usize = 80;
/// Widest option column before the help text moves to a line of its own.
const OPTION_COLUMN: usize = 26;

/// The help page of the command at `path` (`[]` for the program, `["state", "get"]`).
pub fn page(path: &[&str]) -> Option<String> {
    let cmd = commands::find(path)?;
    let mut full = String::from(PROGRAM.name);
    for p in path {
        full.push(' ');
        full.push_str(p);
    }
    let mut out = String::new();
    wrap_into(&mut out, &format!("{full} — {}", cmd.about), "", "    ");
    out.push_str("\nUsage:\n");
    for u in cmd.usage {
        let _ = writeln!(out, "{}", format!("  {full} {u}").trim_end());
    }
    if !cmd.text.is_empty() {
        out.push('\n');
        paragraphs(&mut out, cmd.text, "");
    }
    if !cmd.subcommands.is_empty() {
        out.push_str("\nCommands:\n");
        let width = cmd
            .subcommands
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0);
        for sub in cmd.subcommands {
            let label = format!("  {:width$}  ", sub.name);
            wrap_into(&mut out, sub.about, &label, &" ".repeat(label.len()));
        }
    }
    for section in cmd.sections {
        let _ = writeln!(out, "\n{}:", section.title);
        for o in section.opts {
            option(&mut out, o);
        }
    }
    let is_state = path.first() == Some(&"state");
    if path.is_empty() || is_state {
        out.push_str("\nExit status:\n");
        for (code, meaning) in commands::EXIT_STATUS {
            if *code == 7 && path != ["state", "health"] && !path.is_empty() {
                continue;
            }
            let label = format!("  {code}  ");
            wrap_into(&mut out, meaning, &label, "     ");
        }
    }
    if path.is_empty() {
        out.push_str("\nEnvironment:\n");
        for (name, meaning) in commands::ENVIRONMENT {
            let _ = writeln!(out, "  {name}");
            wrap_into(&mut out, meaning, "      ", "      ");
        }
    }
    Some(out)
}

/// `-r, --raw`, `    --socket PATH`: how an option is written in a help page.
pub fn option_label(o: &Opt) -> String {
    let short = o.short.map_or("    ".to_owned(), |c| format!("-{c}, "));
    match o.value {
        Some(v) => format!("{short}--{} {v}", o.long),
        None => format!("{short}--{}", o.long),
    }
}

/// The default as the help pages say it, if there is one to say.
pub fn default_note(d: Default) -> Option<String> {
    match d {
        Default::None => None,
        Default::Required => Some("(required)".to_owned()),
        Default::Value(v) | Default::Text(v) => Some(format!("[default: {v}]")),
    }
}

fn option(out: &mut String, o: &Opt) {
    let label = format!("  {}", option_label(o));
    let mut text = o.help.to_owned();
    if let Some(note) = default_note(o.default) {
        text.push(' ');
        text.push_str(&note);
    }
    let indent = " ".repeat(OPTION_COLUMN + 2);
    if label.len() + 2 <= OPTION_COLUMN + 2 {
        let first = format!("{label:width$}", width = OPTION_COLUMN + 2);
        wrap_into(out, &text, &first, &indent);
    } else {
        let _ = writeln!(out, "{label}");
        wrap_into(out, &text, &indent, &indent);
    }
}

/// Paragraphs separated by blank lines; one with line breaks of its own is printed as
/// it is (commands to copy), indented.
fn paragraphs(out: &mut String, text: &str, indent: &str) {
    for (i, para) in text.split("\n\n").enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if para.contains('\n') {
            for line in para.lines() {
                let _ = writeln!(out, "{indent}  {line}");
            }
        } else {
            wrap_into(out, para, indent, indent);
        }
    }
}

/// Appends `text` wrapped at `WIDTH`, the first line after `first`, the others after
/// `rest`.
pub fn wrap_into(out: &mut String, text: &str, first: &str, rest: &str) {
    let mut line = String::from(first);
    let mut empty = true;
    for word in text.split_whitespace() {
        let len = line.chars().count();
        if !empty && len + 1 + word.chars().count() > WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line = String::from(rest);
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

/// Which command a `help` command or a `--help` anywhere asks about: the path of
/// command names at the front of `words`, as far as they name commands.
pub fn command_path<'a>(words: &[&'a str]) -> Vec<&'a str> {
    let mut at: &Command = &PROGRAM;
    let mut path = Vec::new();
    for w in words {
        match at.sub(w) {
            Some(sub) => {
                path.push(*w);
                at = sub;
            }
            None => break,
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_fits_the_terminal_and_is_its_own() {
        let mut seen = std::collections::BTreeSet::new();
        for path in commands::paths() {
            let text = page(&path).unwrap();
            for line in text.lines() {
                assert!(line.chars().count() <= WIDTH, "{path:?}: {line:?}");
            }
            assert!(text.contains("--help"), "{path:?} lists -h, --help");
            assert!(seen.insert(text), "{path:?} has the same page as another");
        }
        assert!(page(&["nope"]).is_none());
    }

    #[test]
    fn serve_page_lists_flags_with_defaults() {
        let text = page(&["serve"]).unwrap();
        assert!(text.contains("--data-dir DIR"));
        assert!(text.contains("(required)"));
        assert!(text.contains("[default: /var/run/plexd/api.sock]"));
        assert!(text.contains("--max-report-bytes SIZE"));
    }

    #[test]
    fn wraps_with_hanging_indent() {
        let mut out = String::new();
        wrap_into(&mut out, &"word ".repeat(30), "  x  ", "     ");
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.len() > 1 && lines[1].starts_with("     word"));
        assert_eq!(
            command_path(&["state", "get", "metadata"]),
            ["state", "get"]
        );
        assert_eq!(command_path(&["bogus"]), Vec::<&str>::new());
    }
}
