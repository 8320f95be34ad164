//! Times in exports, made milliseconds since 1970 (UTC).
//!
//! Integers may count seconds, milliseconds, microseconds or nanoseconds: vendors use all
//! four. Between 1971 and 2100 the four ranges do not overlap, so a value's magnitude names
//! its unit; the first value of a column fixes the unit for the rest, and a value that fits
//! no unit, or another unit, is refused rather than misread (a µs time read as ms lands in
//! the year 57982). Text is RFC 3339; a time without an offset is refused unless the stage
//! says which fixed offset the file uses.

use std::fmt;

/// 1971-01-01T00:00:00Z and 2100-01-01T00:00:00Z, in seconds: the plausible span.
const EARLIEST_S: i64 = 31_536_000;
const LATEST_S: i64 = 4_102_444_800;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Milliseconds,
    Microseconds,
    Nanoseconds,
}

impl Unit {
    const ALL: [Unit; 4] = [Unit::Seconds, Unit::Milliseconds, Unit::Microseconds, Unit::Nanoseconds];

    fn per_second(self) -> i64 {
        match self {
            Unit::Seconds => 1,
            Unit::Milliseconds => 1_000,
            Unit::Microseconds => 1_000_000,
            Unit::Nanoseconds => 1_000_000_000,
        }
    }

    /// The unit in which `value` is a time between 1971 and 2100, if any.
    pub fn of(value: i64) -> Option<Unit> {
        Unit::ALL.into_iter().find(|u| (EARLIEST_S * u.per_second()..LATEST_S * u.per_second()).contains(&value))
    }

    /// `value` in this unit, as milliseconds (rounded down).
    pub fn to_ms(self, value: i64) -> i64 {
        match self {
            Unit::Seconds => value * 1_000,
            Unit::Milliseconds => value,
            Unit::Microseconds => value.div_euclid(1_000),
            Unit::Nanoseconds => value.div_euclid(1_000_000),
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unit::Seconds => "seconds",
            Unit::Milliseconds => "milliseconds",
            Unit::Microseconds => "microseconds",
            Unit::Nanoseconds => "nanoseconds",
        })
    }
}

/// The offset from UTC, in seconds, that a stage's `timezone` param gives to times written
/// without one: `UTC`, `Z`, or a fixed offset such as `+01:00`.
pub fn parse_zone(text: &str) -> Result<i64, String> {
    if text.eq_ignore_ascii_case("utc") || text.eq_ignore_ascii_case("z") {
        return Ok(0);
    }
    parse_offset(text).ok_or_else(|| {
        format!(
            "`{text}` is not `UTC` or a fixed offset such as `+01:00`; named time zones (with daylight saving) are not supported: export the times with their offset instead"
        )
    })
}

/// One time column of one file: the unit its integers use, once the first one is seen.
#[derive(Debug, Default)]
pub struct TimeColumn {
    unit: Option<Unit>,
    /// The offset for times written without one; `None` refuses them.
    zone: Option<i64>,
}

impl TimeColumn {
    pub fn new(zone: Option<i64>) -> TimeColumn {
        TimeColumn { unit: None, zone }
    }

    /// The offset given to times written without one.
    pub fn zone(&self) -> Option<i64> {
        self.zone
    }

    /// The unit this column's integers were found to use.
    pub fn unit(&self) -> Option<Unit> {
        self.unit
    }

    /// An integer time in whichever unit the column uses. Errors say what is wrong, without
    /// the place: the caller adds the file, row and column.
    pub fn integer(&mut self, value: i64) -> Result<i64, String> {
        let Some(found) = Unit::of(value) else {
            return Err(format!(
                "`{value}` is not a time between 1971 and 2100 in seconds, milliseconds, microseconds or nanoseconds since 1970"
            ));
        };
        match self.unit {
            None => self.unit = Some(found),
            Some(unit) if unit != found => {
                return Err(format!(
                    "`{value}` reads as {found} since 1970, but this column's first time was in {unit}; one column must use one unit"
                ));
            }
            Some(_) => {}
        }
        Ok(found.to_ms(value))
    }

    /// A time written as text: an integer (see `integer`) or RFC 3339.
    pub fn text(&mut self, value: &str) -> Result<i64, String> {
        if let Ok(integer) = value.parse::<i64>() {
            return self.integer(integer);
        }
        parse_rfc3339(value, self.zone)
    }
}

/// `2026-01-05T14:30:02.125-05:00`, `…Z`, `2026-01-05 14:30:02+01:00`, or a date alone
/// (midnight UTC). A time of day without an offset takes `zone`, or is refused.
pub fn parse_rfc3339(text: &str, zone: Option<i64>) -> Result<i64, String> {
    let expected = || {
        format!("`{text}` is not a time (RFC 3339 such as `2026-01-05T14:30:02Z` or `…-05:00`, or a number since 1970)")
    };
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let (Some(year), Some(month), Some(day)) = (digits(0..4), digits(5..7), digits(8..10)) else {
        return Err(expected());
    };
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !(1..=12).contains(&month) {
        return Err(expected());
    }
    if !(1..=days_in_month(year, month)).contains(&day) {
        return Err(format!("`{text}`: day {day} does not exist in {year}-{month:02}"));
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Ok(days * 86_400_000);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.get(13) != Some(&b':') {
        return Err(expected());
    }
    let (Some(hour), Some(minute)) = (digits(11..13), digits(14..16)) else { return Err(expected()) };
    let mut at = 16;
    let mut second = 0;
    let mut millis = 0;
    if b.get(at) == Some(&b':') {
        second = digits(at + 1..at + 3).ok_or_else(expected)?;
        at += 3;
        if b.get(at) == Some(&b'.') {
            let start = at + 1;
            at = start;
            while b.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            if at == start {
                return Err(expected());
            }
            // Milliseconds from the first three digits; finer digits are dropped, as for
            // integer times in finer units.
            millis = b[start..at].iter().chain(b"000").take(3).fold(0, |n, d| n * 10 + i64::from(d - b'0'));
        }
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(expected());
    }
    let offset = match &text[at..] {
        "Z" | "z" => 0,
        "" => zone.ok_or_else(|| {
            format!(
                "`{text}` has no UTC offset, so it could be any time zone's; export it with `Z` or an offset such as `-05:00`, or set param `timezone = \"UTC\"` (or `\"+01:00\"`...) on this stage to say which"
            )
        })?,
        rest => parse_offset(rest).ok_or_else(expected)?,
    };
    // A leap second (:60) is read as the last millisecond of its minute.
    let leap = second == 60;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second.min(59) - offset;
    Ok(seconds * 1_000 + if leap { 999 } else { millis })
}

/// `+05:00`, `-0530` or `+05`, as seconds east of UTC.
fn parse_offset(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let two = |i: usize| -> Option<i64> {
        let part = b.get(i..i + 2)?;
        part.iter().all(u8::is_ascii_digit).then(|| i64::from(part[0] - b'0') * 10 + i64::from(part[1] - b'0'))
    };
    let hours = two(1)?;
    let minutes = match b.len() {
        3 => 0,
        5 => two(3)?,
        6 if b[3] == b':' => two(4)?,
        _ => return None,
    };
    (hours <= 18 && minutes < 60).then_some(sign * (hours * 3_600 + minutes * 60))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `ms` as `2026-01-05 14:30` (UTC), or only the date.
pub fn format_utc(ms: i64, with_time: bool) -> String {
    let days = ms.div_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    if !with_time {
        return format!("{year:04}-{month:02}-{day:02}");
    }
    let minutes = ms.rem_euclid(86_400_000) / 60_000;
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", minutes / 60, minutes % 60)
}

/// The date of a day count since 1970-01-01 (the inverse of `days_from_civil`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-05T14:30:02Z.
    const MS: i64 = 1_767_623_402_000;

    #[test]
    fn each_unit_is_told_by_its_magnitude_and_converted() {
        for (value, unit) in [
            (MS / 1_000, Unit::Seconds),
            (MS, Unit::Milliseconds),
            (MS * 1_000 + 999, Unit::Microseconds),
            (MS * 1_000_000 + 999_999, Unit::Nanoseconds),
        ] {
            let mut column = TimeColumn::new(None);
            assert_eq!(column.integer(value), Ok(MS), "{unit}");
            assert_eq!(column.unit(), Some(unit));
        }
    }

    #[test]
    fn the_bound_holds_on_both_sides_and_one_column_keeps_one_unit() {
        let mut column = TimeColumn::new(None);
        assert!(column.integer(12).unwrap_err().contains("between 1971 and 2100"));
        // Past 2100 as nanoseconds and not yet a plausible anything else.
        assert!(column.integer(5_000_000_000_000_000_000).is_err());
        assert!(column.integer(4_200_000_000).is_err(), "2103 in seconds, 1970 in ms");
        column.integer(MS).unwrap();
        let mixed = column.integer(MS / 1_000).unwrap_err();
        assert!(mixed.contains("reads as seconds") && mixed.contains("first time was in milliseconds"), "{mixed}");
    }

    #[test]
    fn rfc3339_times_with_offsets_are_read_and_naive_ones_need_a_zone() {
        assert_eq!(parse_rfc3339("2026-01-05T14:30:02Z", None), Ok(MS));
        assert_eq!(parse_rfc3339("2026-01-05T09:30:02-05:00", None), Ok(MS));
        assert_eq!(parse_rfc3339("2026-01-05 15:30:02.125+0100", None), Ok(MS + 125));
        assert_eq!(parse_rfc3339("2026-01-05T14:30:02.1234567z", None), Ok(MS + 123));
        assert_eq!(parse_rfc3339("2026-01-05", None), Ok(MS - (14 * 3600 + 30 * 60 + 2) * 1000));
        assert_eq!(parse_rfc3339("1960-02-29T00:00:00Z", None), Ok(-310_521_600_000));
        let naive = parse_rfc3339("2026-01-05 14:30:02", None).unwrap_err();
        assert!(naive.contains("has no UTC offset") && naive.contains("timezone"), "{naive}");
        assert_eq!(parse_rfc3339("2026-01-05 15:30:02", Some(parse_zone("+01:00").unwrap())), Ok(MS));
        assert_eq!(parse_rfc3339("2026-01-05 14:30:02", Some(parse_zone("UTC").unwrap())), Ok(MS));
        for bad in ["2026-02-30T00:00:00Z", "2026-13-01", "2026-01-05T25:00:00Z", "05/01/2026", "2026-01-05T14:30Zed"] {
            assert!(parse_rfc3339(bad, None).is_err(), "{bad}");
        }
        assert!(parse_zone("Europe/London").unwrap_err().contains("named time zones"));
        assert_eq!(format_utc(MS, true), "2026-01-05 14:30");
        assert_eq!(format_utc(-310_521_600_000, false), "1960-02-29");
    }
}
