//! The host's clock: UTC milliseconds, the unit of every stored time.

/// Now, in UTC milliseconds (plus the skew, if one is set).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis().saturating_add(skew())
}

/// An offset in milliseconds added to the host's clock, from `PLUGHOST_CLOCK_SKEW_MS`
/// (read once; default 0): a drill or a test can run a process days ahead, to see
/// what waits, postponements and recurrences do then. Never set in production.
pub fn skew() -> i64 {
    static SKEW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *SKEW.get_or_init(|| match std::env::var("PLUGHOST_CLOCK_SKEW_MS") {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(value = %v, "PLUGHOST_CLOCK_SKEW_MS is not a whole number of milliseconds: ignored");
            0
        }),
        Err(_) => 0,
    })
}

/// A UTC millisecond time as RFC 3339 (seconds precision), for people.
pub fn format_time(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => format!("{ms} ms"),
    }
}
