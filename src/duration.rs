//! Go-syntax durations (`300ms`, `5s`, `1m30s`, `1.5h`) for flags and the config file.
//!
//! Only parsing and formatting; what range a particular setting accepts is decided by
//! its user (`config` for flags, the blocking-query code for `?wait=`).

use std::time::Duration;

/// Parses a Go `time.ParseDuration` string. Negative durations are refused (no setting
/// of ours can use one); `0` is accepted and left for the caller to judge. Spaces around
/// the text are ignored.
pub fn parse(text: &str) -> Result<Duration, String> {
    let nanos = parse_nanos(text.trim(), text)?;
    if nanos > u64::MAX as f64 {
        return Err(format!("duration {text:?} is too large"));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

/// Like `parse`, for a value the caller caps anyway (a blocking query's `wait`): the
/// text must be exactly a duration (no spaces around it), and a duration longer than
/// `max` — however long, even beyond what a `Duration` holds — is `max`.
pub fn parse_at_most(text: &str, max: Duration) -> Result<Duration, String> {
    let nanos = parse_nanos(text, text)?;
    if nanos >= max.as_nanos() as f64 {
        return Ok(max);
    }
    Ok(Duration::from_nanos(nanos.round() as u64).min(max))
}

/// The syntax shared by `parse` and `parse_at_most`: total nanoseconds (possibly
/// infinite for absurd texts; never negative or NaN). `text` is what error messages show.
fn parse_nanos(s: &str, text: &str) -> Result<f64, String> {
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(0.0);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return Err(format!("negative duration {text:?}"));
    }
    let mut rest = s;
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {text:?}"))?;
        if num_len == 0 {
            return Err(format!("invalid duration {text:?}"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => return Err(format!("unknown unit {other:?} in duration {text:?}")),
        };
        rest = &rest[unit_len..];
        total_nanos += value * unit;
    }
    if total_nanos.is_nan() {
        return Err(format!("invalid duration {text:?}"));
    }
    Ok(total_nanos)
}

/// Formats a duration the way Go prints it for the common cases (`5s`, `1m30s`, `250ms`).
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 && nanos % 1_000_000 == 0 {
        return format!("{}ms", nanos / 1_000_000);
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let frac = d.subsec_nanos();
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let f = format!("{frac:09}");
        out.push_str(&format!("{s}.{}s", f.trim_end_matches('0')));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_syntax() {
        assert_eq!(parse("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("2h45m").unwrap(), Duration::from_secs(9900));
        assert_eq!(parse("10us").unwrap(), Duration::from_micros(10));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        for bad in ["", "5", "s", "-5s", "5x", "1..5s", "5s3"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn capped_durations() {
        let max = Duration::from_secs(600);
        assert_eq!(parse_at_most("30s", max).unwrap(), Duration::from_secs(30));
        assert_eq!(parse_at_most("0", max).unwrap(), Duration::ZERO);
        assert_eq!(parse_at_most("11m", max).unwrap(), max);
        // Longer than a `Duration` holds, or than an f64 counts: still just "long".
        assert_eq!(parse_at_most("99999999999999999999h", max).unwrap(), max);
        assert_eq!(
            parse_at_most(&format!("{}h", "9".repeat(400)), max).unwrap(),
            max
        );
        assert!(parse("99999999999999999999h").is_err());
        for bad in [
            "", " 5s", "5s ", "+0", "00", "5", "-1s", "1.2.3s", "5sm", ".",
        ] {
            assert!(parse_at_most(bad, max).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_at_most("+.5s", max).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_at_most("5.s", max).unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_at_most("1µs1μs", max).unwrap(),
            Duration::from_micros(2)
        );
    }

    #[test]
    fn formats() {
        assert_eq!(format(Duration::from_secs(5)), "5s");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
    }
}
