//! Per-invocation limits: what a plug-in may consume before the host stops it.
//!
//! Every allocation or loop a guest can drive is bounded by one of these. The
//! defaults apply to every step; a step may override each one, within the
//! host's maxima (checked when the step is created).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Resolved limits for one invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Deterministic CPU budget (wasmtime fuel, about one unit per instruction).
    pub fuel: u64,
    /// Largest linear memory, in bytes, summed over the component's memories.
    pub memory_bytes: u64,
    /// Wall-clock budget in milliseconds, time inside host calls included.
    pub timeout_ms: u64,
    /// Trace log (trace calls plus stdout and stderr), in bytes.
    pub trace_bytes: u64,
    /// Calls into the organization service and tracing.
    pub host_calls: u64,
    /// Largest execution context sent to the plug-in, and largest record or
    /// query it may pass in one host call, in (approximate) bytes.
    pub input_bytes: u64,
    /// Largest execution result it may return, in (approximate) bytes.
    pub output_bytes: u64,
    /// Most data (approximate bytes of records) the writes of one request or job may
    /// hold before they commit: the invocation's own service calls and the nested
    /// pipeline they run. A write past it fails with `write_limit`.
    pub write_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 10_000_000_000,
            memory_bytes: 64 << 20,
            timeout_ms: 30_000,
            trace_bytes: 64 << 10,
            host_calls: 10_000,
            input_bytes: 8 << 20,
            output_bytes: 4 << 20,
            write_bytes: 32 << 20,
        }
    }
}

/// The largest value a step may set for each limit.
pub const MAX_TIMEOUT_MS: u64 = 15 * 60 * 1000;
pub const MAX_TRACE_BYTES: u64 = 16 << 20;
pub const MAX_PAYLOAD_BYTES: u64 = 64 << 20;
pub const MAX_WRITE_BYTES: u64 = 256 << 20;

impl Limits {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Applies a step's overrides to these defaults.
    pub fn with(mut self, o: &LimitOverrides) -> Limits {
        let pick = |slot: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        pick(&mut self.fuel, o.fuel);
        pick(&mut self.memory_bytes, o.memory_bytes);
        pick(&mut self.timeout_ms, o.timeout_ms);
        pick(&mut self.trace_bytes, o.trace_bytes);
        pick(&mut self.host_calls, o.host_calls);
        pick(&mut self.input_bytes, o.input_bytes);
        pick(&mut self.output_bytes, o.output_bytes);
        pick(&mut self.write_bytes, o.write_bytes);
        self
    }
}

/// A step's own limits; `None` keeps the host default (and is left out of JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_calls: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_bytes: Option<u64>,
}

impl LimitOverrides {
    /// Checks each override against the host maxima; `max_memory_bytes` is the
    /// runtime's memory slot size.
    pub fn validate(&self, max_memory_bytes: u64) -> Result<(), String> {
        let check = |name: &str, v: Option<u64>, max: u64| match v {
            Some(0) => Err(format!("limit {name} must be greater than 0")),
            Some(v) if v > max => Err(format!("limit {name} = {v} exceeds the host maximum {max}")),
            _ => Ok(()),
        };
        check("fuel", self.fuel, u64::MAX)?;
        check("memory_bytes", self.memory_bytes, max_memory_bytes)?;
        check("timeout_ms", self.timeout_ms, MAX_TIMEOUT_MS)?;
        check("trace_bytes", self.trace_bytes, MAX_TRACE_BYTES)?;
        check("host_calls", self.host_calls, u64::from(u32::MAX))?;
        check("input_bytes", self.input_bytes, MAX_PAYLOAD_BYTES)?;
        check("output_bytes", self.output_bytes, MAX_PAYLOAD_BYTES)?;
        check("write_bytes", self.write_bytes, MAX_WRITE_BYTES)
    }

    /// Parses `name=value` pairs as given on the command line, e.g. `fuel=1000000`.
    /// Sizes accept KiB/MiB suffixes (`memory_bytes=32MiB`), times `ms`/`s` (`timeout=5s`).
    pub fn set(&mut self, pair: &str) -> Result<(), String> {
        let (name, value) =
            pair.split_once('=').ok_or_else(|| format!("limit '{pair}' is not name=value (e.g. fuel=1000000)"))?;
        let name = name.trim();
        let value = value.trim();
        let slot = match name {
            "fuel" => &mut self.fuel,
            "memory" | "memory_bytes" => &mut self.memory_bytes,
            "timeout" | "timeout_ms" => &mut self.timeout_ms,
            "trace" | "trace_bytes" => &mut self.trace_bytes,
            "host_calls" => &mut self.host_calls,
            "input" | "input_bytes" => &mut self.input_bytes,
            "output" | "output_bytes" => &mut self.output_bytes,
            "write" | "write_bytes" => &mut self.write_bytes,
            _ => {
                return Err(format!(
                    "unknown limit '{name}': use fuel, memory, timeout, trace, host_calls, input, output or write"
                ));
            }
        };
        *slot = Some(parse_quantity(value).ok_or_else(|| format!("limit {name}: '{value}' is not a number"))?);
        Ok(())
    }
}

/// "1000", "32MiB", "64KiB", "5s", "250ms" -> the number in bytes or milliseconds.
fn parse_quantity(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '_').unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.replace('_', "").parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" | "ms" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "s" => 1000,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_apply() {
        let mut o = LimitOverrides::default();
        o.set("memory=32MiB").unwrap();
        o.set("timeout=5s").unwrap();
        o.set("fuel=1_000").unwrap();
        let l = Limits::default().with(&o);
        assert_eq!(l.memory_bytes, 32 << 20);
        assert_eq!(l.timeout_ms, 5000);
        assert_eq!(l.fuel, 1000);
        assert_eq!(l.trace_bytes, Limits::default().trace_bytes);
        assert!(o.set("colour=3").unwrap_err().contains("unknown limit"));
        assert!(o.set("fuel").unwrap_err().contains("name=value"));
    }

    #[test]
    fn overrides_are_bounded() {
        let mut o = LimitOverrides::default();
        o.set("memory=1GiB").unwrap();
        assert!(o.validate(256 << 20).unwrap_err().contains("exceeds the host maximum"));
        let zero = LimitOverrides { fuel: Some(0), ..Default::default() };
        assert!(zero.validate(256 << 20).unwrap_err().contains("greater than 0"));
    }
}
