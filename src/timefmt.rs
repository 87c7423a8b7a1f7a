//! Calendar arithmetic and RFC 3339 text for timestamps, without a date-time crate.
//!
//! `format_rfc3339_utc` writes what Go's `time.Time` marshals to for a UTC time
//! (RFC3339Nano: fraction with trailing zeros removed); `parse_rfc3339` reads any
//! RFC 3339 timestamp with its offset. HTTP dates (`Date`, `Last-Modified`) use the
//! `httpdate` crate instead.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 → (year, month 1–12, day 1–31). Howard Hinnant's algorithm.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Writes `secs`+`nanos` since the epoch, shifted by `offset_secs`, as RFC3339Nano
/// the way Go does: `Z` for a zero offset, `±hh:mm` otherwise, fraction trimmed.
pub fn format_rfc3339(secs: i64, nanos: u32, offset_secs: i32) -> String {
    let local = secs + i64::from(offset_secs);
    let days = local.div_euclid(86_400);
    let sod = local.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        y,
        mo,
        d,
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    if offset_secs == 0 {
        s.push('Z');
    } else {
        let sign = if offset_secs < 0 { '-' } else { '+' };
        let abs = offset_secs.unsigned_abs();
        s.push_str(&format!("{sign}{:02}:{:02}", abs / 3600, (abs / 60) % 60));
    }
    s
}

/// A UTC `SystemTime` as RFC3339Nano (`2026-03-01T12:00:00.5Z`).
pub fn format_rfc3339_utc(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let mut secs = -(d.as_secs() as i64);
            let mut nanos = d.subsec_nanos();
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            (secs, nanos)
        }
    };
    format_rfc3339(secs, nanos, 0)
}

/// A parsed RFC 3339 timestamp: the instant, and the offset it was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    pub unix_secs: i64,
    pub nanos: u32,
    pub offset_secs: i32,
}

impl Timestamp {
    pub fn to_system_time(self) -> SystemTime {
        if self.unix_secs >= 0 {
            UNIX_EPOCH + Duration::new(self.unix_secs as u64, self.nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(self.unix_secs.unsigned_abs())
                + Duration::from_nanos(u64::from(self.nanos))
        }
    }

    /// Go's RFC3339Nano text for this instant in its own offset.
    pub fn to_rfc3339_nano(self) -> String {
        format_rfc3339(self.unix_secs, self.nanos, self.offset_secs)
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±hh:mm)`; `t`/`z` accepted in either case
/// as RFC 3339 allows. Fractions longer than nanoseconds are refused, as Go does.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let year = num(0..4)?;
    let month = num(5..7)?;
    let day = num(8..10)?;
    let hour = num(11..13)?;
    let min = num(14..16)?;
    let sec = num(17..19)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || !(1..=12).contains(&month) || hour > 23 || min > 59 || sec > 59 {
        return None;
    }
    let month_days = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let max_day = if month == 2 && leap {
        29
    } else {
        month_days[month as usize - 1]
    };
    if day == 0 || day > max_day {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        let frac: u32 = std::str::from_utf8(&b[start..i]).ok()?.parse().ok()?;
        nanos = frac * 10u32.pow((9 - digits) as u32);
    }
    let offset_secs: i32 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)? as i32;
            let om = num(i + 4..i + 6)? as i32;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let local = days * 86_400 + i64::from(hour * 3600 + min * 60 + sec);
    Some(Timestamp {
        unix_secs: local - i64::from(offset_secs),
        nanos,
        offset_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in [
            "2026-03-01T12:00:00Z",
            "2026-03-01T12:00:00.12Z",
            "2026-03-01T13:30:00+01:30",
            "1999-12-31T23:59:59.123456789-08:00",
            "2024-02-29T00:00:00Z",
        ] {
            let t = parse_rfc3339(s).expect(s);
            assert_eq!(t.to_rfc3339_nano(), s);
        }
        let t = parse_rfc3339("2026-03-01T12:00:00.120000Z").unwrap();
        assert_eq!(t.to_rfc3339_nano(), "2026-03-01T12:00:00.12Z");
        let t = parse_rfc3339("2026-03-01T12:00:00.000Z").unwrap();
        assert_eq!(t.to_rfc3339_nano(), "2026-03-01T12:00:00Z");
        let a = parse_rfc3339("2026-03-01T13:30:00+01:30").unwrap();
        let b = parse_rfc3339("2026-03-01T12:00:00Z").unwrap();
        assert_eq!(a.unix_secs, b.unix_secs);
    }

    #[test]
    fn rejects_bad_text() {
        for s in [
            "",
            "2026-03-01",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-03-01T12:00:00",
            "2026-03-01T12:00:00.Z",
            "2026-03-01T12:00:00.1234567890Z",
            "2026-03-01T12:00:00+0100",
            "2026-03-01T12:00:00Zjunk",
        ] {
            assert!(parse_rfc3339(s).is_none(), "{s}");
        }
    }

    #[test]
    fn formats_system_time() {
        let t = UNIX_EPOCH + Duration::new(1_772_366_400, 500_000_000);
        assert_eq!(format_rfc3339_utc(t), "2026-03-01T12:00:00.5Z");
    }

    /// Instants past a 32-bit `time_t` (2038) and past `u32` seconds (2106) survive the
    /// round trip on every target; CI runs this on 32-bit ARM too.
    #[test]
    fn instants_past_32_bit_seconds_round_trip() {
        for (secs, text) in [
            (1_i64 << 31, "2038-01-19T03:14:08Z"),
            (1_i64 << 32, "2106-02-07T06:28:16Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs());
            assert_eq!(format_rfc3339_utc(t), text);
            let parsed = parse_rfc3339(text).unwrap();
            assert_eq!(parsed.unix_secs, secs);
            assert_eq!(parsed.to_system_time(), t);
        }
    }
}
