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

fn set(pattern: &str, start_ms: i64) -> Result<rrule::RRuleSet, String> {
    let pattern = pattern.trim().trim_start_matches("RRULE:");
    if pattern.is_empty() {
        return Err("the recurrence pattern is empty: give e.g. FREQ=DAILY;BYHOUR=2".into());
    }
    let mut has_freq = false;
    for part in pattern.split(';') {
        let (name, value) =
            part.split_once('=').ok_or_else(|| format!("recurrence part '{part}' is not NAME=VALUE"))?;
        let name = name.trim().to_ascii_uppercase();
        if !PARTS.contains(&name.as_str()) {
            return Err(format!("recurrence part '{name}' is not supported: use {}", PARTS.join(", ")));
        }
        if name == "FREQ" {
            has_freq = true;
            let v = value.trim().to_ascii_uppercase();
            if !FREQUENCIES.contains(&v.as_str()) {
                return Err(format!(
                    "FREQ={value} is not supported: use MINUTELY, HOURLY, DAILY, WEEKLY, MONTHLY or YEARLY"
                ));
            }
        }
    }
    if !has_freq {
        return Err("the recurrence pattern needs FREQ (e.g. FREQ=DAILY)".into());
    }
    let text = format!("DTSTART:{}\nRRULE:{pattern}", rfc5545(start_ms)?);
    rrule::RRuleSet::from_str(&text).map(rrule::RRuleSet::limit).map_err(|e| format!("invalid recurrence pattern: {e}"))
}

/// Checks a pattern; the message names the part that is wrong.
pub fn validate(pattern: &str, start_ms: i64) -> Result<(), String> {
    set(pattern, start_ms).map(|_| ())
}

/// The first occurrence strictly after `after_ms`, if the pattern has one.
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
    fn occurrences_follow_the_pattern() {
        assert_eq!(next_after("FREQ=DAILY;BYHOUR=2;BYMINUTE=30", MONDAY, MONDAY).unwrap(), Some(MONDAY + 150 * MIN));
        assert_eq!(next_after("FREQ=MINUTELY;INTERVAL=15", MONDAY, MONDAY).unwrap(), Some(MONDAY + 15 * MIN));
        assert_eq!(next_after("FREQ=WEEKLY;BYDAY=WE", MONDAY, MONDAY).unwrap(), Some(MONDAY + 2 * DAY));
        // COUNT is exhausted: no more occurrences.
        assert_eq!(next_after("FREQ=DAILY;COUNT=2", MONDAY, MONDAY).unwrap(), Some(MONDAY + DAY));
        assert_eq!(next_after("FREQ=DAILY;COUNT=2", MONDAY, MONDAY + DAY).unwrap(), None);
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
        assert!(validate("FREQ=DAILY;BYHOUR=25", MONDAY).unwrap_err().contains("invalid recurrence pattern"));
        assert!(validate("FREQ=DAILY;COUNT", MONDAY).unwrap_err().contains("'COUNT'"));
        assert!(validate("", MONDAY).is_err());
    }
}
