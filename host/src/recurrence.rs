//! Recurrence patterns of system jobs: the RFC 5545 RRULE subset Dataverse uses
//! (FREQ=MINUTELY..YEARLY, INTERVAL, COUNT, UNTIL, BYDAY, BYMONTHDAY, BYMONTH,
//! BYHOUR, BYMINUTE) with a start time, evaluated by the `rrule` crate.

use std::str::FromStr;

use chrono::{DateTime, Utc};

/// The RRULE parts accepted.
pub const PARTS: [&str; 9] =
    ["FREQ", "INTERVAL", "COUNT", "UNTIL", "BYDAY", "BYMONTHDAY", "BYMONTH", "BYHOUR", "BYMINUTE"];
const FREQUENCIES: [&str; 6] = ["MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY"];

fn rfc5545(ms: i64) -> Result<String, String> {
    let t = DateTime::<Utc>::from_timestamp_millis(ms).ok_or_else(|| format!("{ms} ms is not a time"))?;
    Ok(t.format("%Y%m%dT%H%M%SZ").to_string())
}

/// The parts of a pattern, each checked: the message names the part that is wrong.
fn parts(pattern: &str) -> Result<Vec<(String, String)>, String> {
    let pattern = pattern.trim().trim_start_matches("RRULE:");
    if pattern.is_empty() {
        return Err("the recurrence pattern is empty: give e.g. FREQ=DAILY;BYHOUR=2".into());
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for part in pattern.split(';') {
        let (name, value) =
            part.split_once('=').ok_or_else(|| format!("recurrence part '{part}' is not NAME=VALUE"))?;
        let name = name.trim().to_ascii_uppercase();
        let value = value.trim().to_ascii_uppercase();
        if !PARTS.contains(&name.as_str()) {
            return Err(format!("recurrence part '{name}' is not supported: use {}", PARTS.join(", ")));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(format!("recurrence part {name} is given twice"));
        }
        if value.is_empty() {
            return Err(format!("{name}= has no value"));
        }
        check_part(&name, &value)?;
        out.push((name, value));
    }
    if !out.iter().any(|(n, _)| n == "FREQ") {
        return Err("the recurrence pattern needs FREQ (e.g. FREQ=DAILY)".into());
    }
    if out.iter().any(|(n, _)| n == "COUNT") && out.iter().any(|(n, _)| n == "UNTIL") {
        return Err("COUNT and UNTIL cannot both be given (RFC 5545): keep one".into());
    }
    Ok(out)
}

/// Checks one part's value.
fn check_part(name: &str, value: &str) -> Result<(), String> {
    let numbers = |lo: i64, hi: i64, what: &str| -> Result<(), String> {
        for item in value.split(',') {
            let ok = item.trim().parse::<i64>().is_ok_and(|n| (lo..=hi).contains(&n) && (n != 0 || lo == 0));
            if !ok {
                return Err(format!("{name}={value}: '{item}' is not {what}"));
            }
        }
        Ok(())
    };
    match name {
        "FREQ" if !FREQUENCIES.contains(&value) => {
            Err(format!("FREQ={value} is not supported: use MINUTELY, HOURLY, DAILY, WEEKLY, MONTHLY or YEARLY"))
        }
        "INTERVAL" | "COUNT" => match value.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(()),
            _ => Err(format!("{name}={value}: give a whole number of at least 1")),
        },
        "UNTIL" => until_ms(value).map(|_| ()),
        "BYMONTHDAY" => numbers(-31, 31, "a day of the month (1 to 31, or -31 to -1 counting from the end)"),
        "BYMONTH" => numbers(1, 12, "a month (1 to 12)"),
        "BYHOUR" => numbers(0, 23, "an hour (0 to 23)"),
        "BYMINUTE" => numbers(0, 59, "a minute (0 to 59)"),
        "BYDAY" => {
            for item in value.split(',') {
                let item = item.trim();
                // The weekday is the last two characters (not bytes: the text is the user's).
                let split = item.char_indices().rev().nth(1).map_or(0, |(i, _)| i);
                let (nth, day) = item.split_at(split);
                let day_ok = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"].contains(&day);
                let nth_ok = nth.is_empty() || nth.parse::<i64>().is_ok_and(|n| n != 0 && (-53..=53).contains(&n));
                if !day_ok || !nth_ok {
                    return Err(format!(
                        "BYDAY={value}: '{item}' is not a weekday (MO..SU, optionally with an ordinal like 1MO or -1FR)"
                    ));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// An UNTIL value: a UTC date-time (20261231T235959Z) or a date (20261231, its end).
fn until_ms(value: &str) -> Result<i64, String> {
    use chrono::NaiveDate;
    let bad =
        || format!("UNTIL={value}: give a UTC time as YYYYMMDDTHHMMSSZ (e.g. 20261231T235959Z) or a date as YYYYMMDD");
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(value, "%Y%m%dT%H%M%SZ") {
        return Ok(t.and_utc().timestamp_millis());
    }
    if value.len() == 8
        && let Ok(d) = NaiveDate::parse_from_str(value, "%Y%m%d")
    {
        return Ok(d.and_hms_opt(23, 59, 59).ok_or_else(bad)?.and_utc().timestamp_millis());
    }
    Err(bad())
}

fn set(pattern: &str, start_ms: i64) -> Result<rrule::RRuleSet, String> {
    let parts = parts(pattern)?;
    if let Some((_, until)) = parts.iter().find(|(n, _)| n == "UNTIL") {
        let until = until_ms(until)?;
        if until < start_ms {
            return Err(format!(
                "UNTIL={} is before the recurrence start {}: the job would never run",
                rfc5545(until)?,
                rfc5545(start_ms)?
            ));
        }
    }
    // COUNT is the number of runs, which the job counts (`SystemJob::recurrence_runs`):
    // occurrences missed while the service was down, or skipped by a resume, do not
    // use it up. The pattern itself is evaluated without it.
    let mut rule: Vec<String> = parts.iter().filter(|(n, _)| n != "COUNT").map(|(n, v)| format!("{n}={v}")).collect();
    // The rrule crate wants UNTIL as a UTC date-time.
    for part in &mut rule {
        if let Some(v) = part.strip_prefix("UNTIL=") {
            *part = format!("UNTIL={}", rfc5545(until_ms(v)?)?);
        }
    }
    let text = format!("DTSTART:{}\nRRULE:{}", rfc5545(start_ms)?, rule.join(";"));
    rrule::RRuleSet::from_str(&text).map(rrule::RRuleSet::limit).map_err(|e| format!("invalid recurrence pattern: {e}"))
}

/// The pattern's COUNT, if it has one: how many times a job on it runs.
pub fn count(pattern: &str) -> Result<Option<u32>, String> {
    Ok(parts(pattern)?.into_iter().find(|(n, _)| n == "COUNT").and_then(|(_, v)| v.parse().ok()))
}

/// Checks a pattern; the message names the part that is wrong.
pub fn validate(pattern: &str, start_ms: i64) -> Result<(), String> {
    set(pattern, start_ms).map(|_| ())
}

/// The first occurrence strictly after `after_ms`, if the pattern has one (UNTIL
/// ends a pattern; COUNT does not, see [`count`]).
pub fn next_after(pattern: &str, start_ms: i64, after_ms: i64) -> Result<Option<i64>, String> {
    let set = set(pattern, start_ms)?;
    Ok(set.into_iter().map(|d| d.timestamp_millis()).find(|t| *t > after_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const DAY: i64 = 24 * 60 * MIN;
    /// 2026-01-05T00:00:00Z, a Monday.
    const MONDAY: i64 = 1_767_571_200_000;

    #[test]
    fn a_weekday_with_wide_characters_is_an_error_not_a_panic() {
        // Found by the fuzzer: BYDAY sliced bytes, not characters.
        let e = validate("FREQ=WEEKLY;BYDAY=M\u{20ac}O", 0).unwrap_err();
        assert!(e.contains("not a weekday"), "{e}");
    }

    #[test]
    fn occurrences_follow_the_pattern() {
        assert_eq!(next_after("FREQ=DAILY;BYHOUR=2;BYMINUTE=30", MONDAY, MONDAY).unwrap(), Some(MONDAY + 150 * MIN));
        assert_eq!(next_after("FREQ=MINUTELY;INTERVAL=15", MONDAY, MONDAY).unwrap(), Some(MONDAY + 15 * MIN));
        assert_eq!(next_after("FREQ=WEEKLY;BYDAY=WE", MONDAY, MONDAY).unwrap(), Some(MONDAY + 2 * DAY));
        // COUNT counts runs (the job's), not occurrences of the pattern.
        assert_eq!(next_after("FREQ=DAILY;COUNT=2", MONDAY, MONDAY + 5 * DAY).unwrap(), Some(MONDAY + 6 * DAY));
        assert_eq!(next_after("FREQ=DAILY;UNTIL=20260107T000000Z", MONDAY, MONDAY + 2 * DAY).unwrap(), None);
    }

    #[test]
    fn the_next_occurrence_is_always_later_and_on_the_pattern() {
        // Property: for many starting points, the next weekly Friday 09:00 is after
        // the point, within a week, on a Friday at 09:00.
        let pattern = "FREQ=WEEKLY;BYDAY=FR;BYHOUR=9;BYMINUTE=0";
        let mut after = MONDAY;
        for _ in 0..200 {
            let next = next_after(pattern, MONDAY, after).unwrap().unwrap();
            assert!(next > after && next - after <= 7 * DAY);
            let t = DateTime::<Utc>::from_timestamp_millis(next).unwrap();
            assert_eq!(t.format("%a %H:%M").to_string(), "Fri 09:00");
            after += 37 * MIN + 3 * 3_600_000;
        }
    }

    #[test]
    fn bad_patterns_name_the_bad_part() {
        assert!(validate("FREQ=SECONDLY", MONDAY).unwrap_err().contains("FREQ=SECONDLY"));
        assert!(validate("FREQ=DAILY;BYSETPOS=1", MONDAY).unwrap_err().contains("BYSETPOS"));
        assert!(validate("BYHOUR=2", MONDAY).unwrap_err().contains("needs FREQ"));
        assert!(validate("FREQ=DAILY;BYHOUR=25", MONDAY).unwrap_err().contains("BYHOUR=25"));
        assert!(validate("FREQ=DAILY;COUNT", MONDAY).unwrap_err().contains("'COUNT'"));
        assert!(validate("", MONDAY).is_err());
        // Each bad value is named, not left to the evaluating library.
        for (pattern, named) in [
            ("FREQ=MONTHLY;BYMONTHDAY=0", "BYMONTHDAY=0"),
            ("FREQ=MONTHLY;BYMONTHDAY=32", "BYMONTHDAY=32"),
            ("FREQ=DAILY;COUNT=0", "COUNT=0"),
            ("FREQ=DAILY;INTERVAL=0", "INTERVAL=0"),
            ("FREQ=DAILY;INTERVAL=-2", "INTERVAL=-2"),
            ("FREQ=YEARLY;BYMONTH=13", "BYMONTH=13"),
            ("FREQ=WEEKLY;BYDAY=XX", "BYDAY=XX"),
            ("FREQ=DAILY;BYMINUTE=60", "BYMINUTE=60"),
            ("FREQ=DAILY;UNTIL=tomorrow", "UNTIL=TOMORROW"),
            ("FREQ=DAILY;UNTIL=20200101T000000Z", "before the recurrence start"),
            ("FREQ=DAILY;COUNT=2;UNTIL=20300101", "COUNT and UNTIL"),
            ("FREQ=DAILY;FREQ=HOURLY", "twice"),
        ] {
            let e = validate(pattern, MONDAY).unwrap_err();
            assert!(e.contains(named), "{pattern}: {e}");
        }
        assert!(validate("FREQ=MONTHLY;BYMONTHDAY=-1", MONDAY).is_ok());
        assert!(validate("FREQ=MONTHLY;BYDAY=-1FR", MONDAY).is_ok());
        assert_eq!(count("FREQ=DAILY;COUNT=3").unwrap(), Some(3));
        assert_eq!(next_after("FREQ=DAILY;UNTIL=20260106", MONDAY, MONDAY).unwrap(), Some(MONDAY + DAY));
    }
}
