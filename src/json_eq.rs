//! Comparing two JSON texts by value: the same value written in other bytes (spacing,
//! object key order, string escapes, number spelling) is equal.
//!
//! Objects compare as maps (key order ignored; of duplicate keys the last counts, as
//! in Go's `encoding/json`), arrays element by element, strings after unescaping, and
//! numbers by their exact decimal value (`1`, `1.0`, `1e0` and `10e-1` are equal; no
//! rounding through floating point, so `9007199254740993` and `9007199254740992`
//! differ). Texts that do not parse, or that nest deeper than `MAX_DEPTH`, are equal
//! only if their bytes are: when in doubt, the answer is "different". This module
//! keeps nothing and does no I/O; it decides equality and nothing else.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// Deepest nesting compared by value (serde_json itself stops at 128).
pub const MAX_DEPTH: usize = 64;

/// Whether `a` and `b` are the same JSON value.
pub fn same_value(a: &str, b: &str) -> bool {
    a == b || equal(a, b, 0).unwrap_or(false)
}

/// `None`: cannot tell (unparsable, too deep, a number too large to normalise).
fn equal(a: &str, b: &str, depth: usize) -> Option<bool> {
    if depth > MAX_DEPTH {
        return None;
    }
    let (a, b) = (a.trim(), b.trim());
    let (ka, kb) = (a.bytes().next()?, b.bytes().next()?);
    match (ka, kb) {
        (b'{', b'{') => {
            let x: BTreeMap<String, &RawValue> = serde_json::from_str(a).ok()?;
            let y: BTreeMap<String, &RawValue> = serde_json::from_str(b).ok()?;
            if x.len() != y.len() {
                return Some(false);
            }
            for (k, v) in &x {
                let Some(w) = y.get(k) else {
                    return Some(false);
                };
                if !equal(v.get(), w.get(), depth + 1)? {
                    return Some(false);
                }
            }
            Some(true)
        }
        (b'[', b'[') => {
            let x: Vec<&RawValue> = serde_json::from_str(a).ok()?;
            let y: Vec<&RawValue> = serde_json::from_str(b).ok()?;
            if x.len() != y.len() {
                return Some(false);
            }
            for (v, w) in x.iter().zip(&y) {
                if !equal(v.get(), w.get(), depth + 1)? {
                    return Some(false);
                }
            }
            Some(true)
        }
        (b'"', b'"') => {
            let x: String = serde_json::from_str(a).ok()?;
            let y: String = serde_json::from_str(b).ok()?;
            Some(x == y)
        }
        (b'-' | b'0'..=b'9', b'-' | b'0'..=b'9') => Some(Number::parse(a)? == Number::parse(b)?),
        _ => {
            // true, false, null, or values of different kinds.
            let x: serde_json::Value = serde_json::from_str(a).ok()?;
            let y: serde_json::Value = serde_json::from_str(b).ok()?;
            let scalar = |v: &serde_json::Value| v.is_null() || v.is_boolean();
            if scalar(&x) && scalar(&y) {
                Some(x == y)
            } else {
                Some(false)
            }
        }
    }
}

/// A JSON number's exact value: `(-1)^negative × 0.digits × 10^exponent`, with no
/// leading or trailing zero digits (zero is no digits, and never negative).
#[derive(Debug, PartialEq, Eq)]
struct Number {
    negative: bool,
    digits: Vec<u8>,
    exponent: i64,
}

impl Number {
    /// Parses JSON number text (`-? int frac? exp?`); `None` if it is not one or its
    /// exponent does not fit.
    fn parse(text: &str) -> Option<Number> {
        let bytes = text.as_bytes();
        let (negative, rest) = match bytes.split_first()? {
            (b'-', rest) => (true, rest),
            _ => (false, bytes),
        };
        let int_len = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        let (int, rest) = rest.split_at(int_len);
        if int.is_empty() || (int.len() > 1 && int[0] == b'0') {
            return None;
        }
        let (frac, rest) = match rest.split_first() {
            Some((b'.', rest)) => {
                let n = rest.iter().take_while(|c| c.is_ascii_digit()).count();
                if n == 0 {
                    return None;
                }
                rest.split_at(n)
            }
            _ => (&rest[..0], rest),
        };
        let exp: i64 = match rest.split_first() {
            None => 0,
            Some((b'e' | b'E', e)) => {
                let (neg, digits) = match e.split_first()? {
                    (b'-', d) => (true, d),
                    (b'+', d) => (false, d),
                    _ => (false, e),
                };
                if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_digit)
                {
                    return None;
                }
                let v: i64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
                if neg {
                    -v
                } else {
                    v
                }
            }
            Some(_) => return None,
        };
        let mut digits: Vec<u8> = int.iter().chain(frac).copied().collect();
        let mut exponent = exp.checked_add(i64::try_from(int.len()).ok()?)?;
        let leading = digits.iter().take_while(|d| **d == b'0').count();
        digits.drain(..leading);
        exponent = exponent.checked_sub(i64::try_from(leading).ok()?)?;
        while digits.last() == Some(&b'0') {
            digits.pop();
        }
        if digits.is_empty() {
            return Some(Number {
                negative: false,
                digits,
                exponent: 0,
            });
        }
        Some(Number {
            negative,
            digits,
            exponent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_values_in_other_bytes() {
        for (a, b) in [
            (
                r#"{"a":1,"b":[1,2]}"#,
                "{ \"b\" : [ 1 , 2 ] ,\n \"a\" : 1 }",
            ),
            ("1", "1.0"),
            ("1", "1e0"),
            ("100", "1E2"),
            ("100", "100.000"),
            ("0.5", "5e-1"),
            ("-0", "0"),
            ("0", "0.0e10"),
            ("-12.50", "-1.25e1"),
            (r#""\u00e9""#, r#""é""#),
            (r#""a\/b""#, r#""a/b""#),
            (r#"{"k":1,"k":2}"#, r#"{"k":2}"#),
            ("[]", "[ ]"),
            ("{}", " { } "),
            ("null", " null"),
            ("true", "true"),
            ("18446744073709551616", "1.8446744073709551616e19"),
        ] {
            assert!(same_value(a, b), "{a} vs {b}");
            assert!(same_value(b, a), "{b} vs {a}");
        }
    }

    #[test]
    fn different_values() {
        for (a, b) in [
            (r#"{"a":1}"#, r#"{"a":2}"#),
            (r#"{"a":1}"#, r#"{"a":1,"b":1}"#),
            (r#"{"a":1}"#, r#"{"b":1}"#),
            ("[1,2]", "[2,1]"),
            ("[1]", "[1,1]"),
            ("9007199254740993", "9007199254740992"),
            ("1", "-1"),
            ("0.1", "0.10000000000000001"),
            ("1", "\"1\""),
            ("null", "false"),
            ("true", "1"),
            ("[]", "{}"),
            (r#""a""#, r#""A""#),
            ("1e999999999999999999", "1e999999999999999998"),
            ("not json", "not  json"),
        ] {
            assert!(!same_value(a, b), "{a} vs {b}");
            assert!(!same_value(b, a), "{b} vs {a}");
        }
        assert!(same_value("not json", "not json"), "equal bytes are equal");
    }

    #[test]
    fn too_deep_is_different_unless_identical() {
        let deep = |open: &str| {
            format!(
                "{}{}",
                open.repeat(MAX_DEPTH + 2),
                "]".repeat(MAX_DEPTH + 2)
            )
        };
        let a = deep("[");
        let b = deep("[ ");
        assert!(same_value(&a, &a));
        assert!(!same_value(&a, &b));
    }
}
