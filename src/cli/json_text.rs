//! JSON text as the daemon sent it, re-spaced for people (`indent_json`,
//! `print_pretty`) or squeezed onto one line (`compact_json`) without re-encoding: no
//! number or string is parsed and printed again, so `1.0`, `1e3` and long integers stay
//! exactly as they were.

/// Prints JSON indented, keeping every number and string exactly as the daemon sent it.
pub fn print_pretty(body: &[u8]) {
    let valid = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
    match std::str::from_utf8(body) {
        Ok(text) if valid => println!("{}", indent_json(text)),
        _ => println!("{}", String::from_utf8_lossy(body)),
    }
}

/// Removes the white space outside strings from valid JSON text (no re-encoding).
pub fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            out.push(c);
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// Re-indents valid JSON text token by token (no re-encoding of numbers or strings).
pub fn indent_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                // Keep empty containers on one line.
                while chars.peek().is_some_and(|n| n.is_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}') | Some(']')) {
                    if let Some(close) = chars.next() {
                        out.push(close);
                    }
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indents_without_reencoding() {
        let text = r#"{"a":[1.0,1e3,12345678901234567890],"b":{},"c":"x, {y}: \"z\"","d":[]}"#;
        let pretty = indent_json(text);
        assert!(
            pretty.contains("1.0")
                && pretty.contains("1e3")
                && pretty.contains("12345678901234567890")
        );
        assert!(pretty.contains(r#""x, {y}: \"z\"""#));
        let again: serde_json::Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(text).unwrap()
        );
        assert!(pretty.contains("\"b\": {}"));
        assert_eq!(compact_json(&pretty), text);
    }
}
