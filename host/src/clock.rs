//! The host's clock: UTC milliseconds, the unit of every stored time.

/// Now, in UTC milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
