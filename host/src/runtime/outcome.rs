//! What one invocation came to: the result or a failure with a stable error code,
//! plus what it consumed and what it traced.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::ExecutionResult;

/// Why an invocation failed. The snake_case names are stable: they appear in the
/// API, the CLI, system jobs and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The plug-in returned a permanent error.
    PluginError,
    /// The plug-in returned a retryable error.
    PluginRetryable,
    /// The plug-in trapped (panic, unreachable, bad memory access, ...).
    Trap,
    /// The plug-in exhausted its call stack (runaway recursion).
    StackOverflow,
    /// The plug-in used up its fuel.
    OutOfFuel,
    /// The plug-in tried to grow its memory beyond its limit.
    MemoryLimit,
    /// The plug-in ran past its wall-clock timeout.
    Timeout,
    /// The plug-in returned something malformed (a bad GUID, a non-finite float, ...).
    InvalidOutput,
    /// The plug-in returned more than its output limit.
    OutputTooLarge,
    /// The execution context was larger than the input limit; the plug-in did not run.
    InputTooLarge,
    /// The plug-in made more host calls than its limit.
    HostCallLimit,
    /// The plug-in wrote more to its trace log than its limit.
    TraceLimit,
    /// The plug-in could not be instantiated (for example the instance pool is full).
    InstantiationFailed,
    /// The plug-in called exit() instead of returning a result.
    PluginExited,
    /// The plug-in passed more data to the host in one call or in its result than
    /// the host copies (wasmtime's hostcall fuel, sized from the payload limits).
    TransferLimit,
    /// The job the plug-in ran for was canceled or paused, and the host stopped it.
    Stopped,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::PluginError,
        ErrorCode::PluginRetryable,
        ErrorCode::Trap,
        ErrorCode::StackOverflow,
        ErrorCode::OutOfFuel,
        ErrorCode::MemoryLimit,
        ErrorCode::Timeout,
        ErrorCode::InvalidOutput,
        ErrorCode::OutputTooLarge,
        ErrorCode::InputTooLarge,
        ErrorCode::HostCallLimit,
        ErrorCode::TraceLimit,
        ErrorCode::InstantiationFailed,
        ErrorCode::PluginExited,
        ErrorCode::TransferLimit,
        ErrorCode::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::PluginError => "plugin_error",
            ErrorCode::PluginRetryable => "plugin_retryable",
            ErrorCode::Trap => "trap",
            ErrorCode::StackOverflow => "stack_overflow",
            ErrorCode::OutOfFuel => "out_of_fuel",
            ErrorCode::MemoryLimit => "memory_limit",
            ErrorCode::Timeout => "timeout",
            ErrorCode::InvalidOutput => "invalid_output",
            ErrorCode::OutputTooLarge => "output_too_large",
            ErrorCode::InputTooLarge => "input_too_large",
            ErrorCode::HostCallLimit => "host_call_limit",
            ErrorCode::TraceLimit => "trace_limit",
            ErrorCode::InstantiationFailed => "instantiation_failed",
            ErrorCode::PluginExited => "plugin_exited",
            ErrorCode::TransferLimit => "transfer_limit",
            ErrorCode::Stopped => "stopped",
        }
    }

    /// Whether trying again may succeed (asynchronous jobs are retried with backoff).
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::PluginRetryable | ErrorCode::InstantiationFailed)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// One invocation: its outcome and what it consumed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Invocation {
    #[serde(with = "outcome_serde")]
    pub outcome: Result<ExecutionResult, Failure>,
    /// The trace log: trace calls, stdout and stderr, in order, bounded.
    pub trace: String,
    pub fuel_used: u64,
    pub duration_us: u64,
    pub host_calls: u64,
}

impl Invocation {
    pub fn failure(&self) -> Option<&Failure> {
        self.outcome.as_ref().err()
    }
}

/// `{"succeeded": {…result…}}` or `{"failed": {"code": …, "message": …}}`: externally
/// tagged, so the binary codec can store it too.
mod outcome_serde {
    use super::*;
    use serde::{Deserializer, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Repr {
        Succeeded(ExecutionResult),
        Failed(Failure),
    }

    pub(super) fn serialize<S: Serializer>(o: &Result<ExecutionResult, Failure>, s: S) -> Result<S::Ok, S::Error> {
        match o {
            Ok(result) => Repr::Succeeded(result.clone()),
            Err(error) => Repr::Failed(error.clone()),
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Result<ExecutionResult, Failure>, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Succeeded(result) => Ok(result),
            Repr::Failed(error) => Err(error),
        })
    }
}
