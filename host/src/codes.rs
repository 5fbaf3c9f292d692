//! The catalogue of error codes: every code the HTTP API or the CLI can return, with
//! what it means. The README's "Error codes" table equals this list, and every code
//! the source hands out is in it (both tested).

/// (code, meaning), grouped by where they come from.
pub const CODES: &[(&str, &str)] = &[
    // A plug-in's run.
    ("plugin_error", "the plug-in refused or failed (its own message)"),
    ("plugin_retryable", "the plug-in failed and asks to be tried again later"),
    ("trap", "the plug-in trapped (a panic, unreachable code, a bad memory access)"),
    ("stack_overflow", "the plug-in exhausted its call stack"),
    ("out_of_fuel", "the plug-in used all of its fuel"),
    ("memory_limit", "the plug-in tried to grow its memory beyond its limit"),
    ("timeout", "the plug-in ran past its wall-clock timeout"),
    ("invalid_output", "the plug-in returned something malformed"),
    ("output_too_large", "the plug-in returned more than its output limit"),
    ("input_too_large", "the execution context was larger than the input limit; the plug-in did not run"),
    ("host_call_limit", "the plug-in made more host calls than its limit"),
    ("trace_limit", "the plug-in wrote more trace than its limit"),
    ("transfer_limit", "the plug-in passed more data to the host in one call or result than the host copies"),
    ("plugin_exited", "the plug-in called exit() instead of returning a result"),
    ("stopped", "the job was canceled or paused while its plug-in ran, and the host stopped it"),
    (
        "instantiation_failed",
        "the plug-in could not be instantiated (the instance pool stayed full, or it is not registered)",
    ),
    // The pipeline.
    ("infinite_loop", "plug-ins called each other deeper than 8 levels"),
    ("write_limit", "a request's or job's pending writes went past its write limit"),
    ("not_found", "the record, job, step, plug-in or route does not exist"),
    ("already_exists", "a record with that id exists"),
    ("invalid", "the request is not valid (the message says which part)"),
    ("unknown_entity", "no entity definition has that name"),
    ("unknown_message", "no plug-in implements that custom message"),
    (
        "conflict",
        "the action conflicts with the current state (a job's status, a concurrent change, a registration in use)",
    ),
    // System jobs.
    ("plugin_not_registered", "the job's step or plug-in was unregistered while it was queued or ran"),
    ("lease_expired", "the job's lease expired more often than allowed: its worker died or hung each time"),
    ("invalid_job", "a bulk job's specification or a workflow run's definition could not be read"),
    // Workflows.
    ("invalid_workflow", "the workflow definition is not valid (the message says where and why)"),
    ("workflow_inactive", "the workflow is not active (activate it first)"),
    ("workflow_not_on_demand", "the workflow cannot be run on demand (its triggers lack on_demand)"),
    (
        "workflow_loop",
        "the run was started by more than 16 workflow runs in one chain: a workflow that keeps triggering itself",
    ),
    // Registration.
    ("not_wasm", "the file is not WebAssembly"),
    ("component_too_large", "the component is larger than the host accepts"),
    ("core_module", "the file is a core module, not a component"),
    ("invalid_component", "the component is malformed"),
    ("incompatible_wit_version", "the component was built against another version of the world"),
    ("wrong_world", "the component does not implement the plug-in world"),
    ("unsupported_import", "the component imports something plug-ins cannot use"),
    ("exceeds_host_limits", "the component needs more memory than the host gives an instance"),
    // Mail (per-record reasons in a bulk mail's or distribution's output).
    ("no_address", "a bulk mail or distribution passed over a record without an address for the channel"),
    ("invalid_address", "a bulk mail or distribution passed over a record whose address is not an email address"),
    ("opted_out", "a bulk mail or distribution passed over a record that opted out (donotemail, donotphone, ...)"),
    ("mail_not_configured", "the outgoing-mail job ran in a process without [mail] smtp"),
    // Remote workers.
    ("protocol_mismatch", "the worker and the server speak different versions of the worker protocol"),
    ("unknown_worker", "the server does not know the worker (it restarted): the worker says hello again"),
    ("lease_lost", "a worker read data for a job it no longer holds"),
    ("worker_failed", "`plughost worker` could not start or reach its server"),
    // The store.
    ("store_locked", "another process has the store open"),
    ("store_corrupt", "the store is damaged or not a plughost store"),
    ("store_too_new", "the store was written by a newer plughost"),
    ("store_error", "the store could not be read or written"),
    ("store_unavailable", "the PostgreSQL store cannot be reached now (down, restarting, or every connection busy)"),
    // HTTP.
    ("unauthorized", "no API key, or one that is unknown, revoked, expired, or of a disabled user"),
    ("forbidden", "the caller's roles lack the privilege the route or record needs (the message names it)"),
    ("bad_host", "the Host header names another server (a server on loopback answers loopback names only)"),
    ("forbidden_origin", "a browser request from an origin the server does not allow (CORS is off by default)"),
    ("csrf", "a dashboard form without its session's CSRF token (reload the page)"),
    (
        "unsupported_media_type",
        "the body's Content-Type is not one the route takes (JSON routes take application/json)",
    ),
    ("payload_too_large", "the request body is larger than the route's limit"),
    ("bad_body", "the request body was cut short or could not be read"),
    ("body_timeout", "the request body did not arrive within the body timeout"),
    ("bad_json", "the request body is not the JSON the route takes"),
    ("internal", "a bug in plughost: please report it"),
    // The command line.
    ("bad_config", "the configuration file or an environment variable is not valid"),
    ("bad_data", "a data file for `plughost test` is not valid"),
    ("bad_run", "a file given to `plughost replay` is not a recorded run (or one from a newer plughost)"),
    ("component", "`plughost component` could not generate bindings or make a component (the message says why)"),
    ("io", "a file could not be read or written"),
    ("load_failed", "a component could not be loaded for `plughost test`"),
    ("runtime", "the plug-in runtime or the async runtime could not start"),
    ("serve_failed", "the server could not start or stopped with an error"),
    ("unreachable", "the server could not be reached"),
    ("http", "the server answered with an error that is not plughost's"),
    ("bad_response", "the server's answer was not understood"),
    ("bench", "a benchmark could not run"),
    ("not_running", "`jobs watch` / `--wait` on a job nothing can run: no server works this data directory's store"),
];

/// Whether `code` is in the catalogue.
pub fn is_known(code: &str) -> bool {
    CODES.iter().any(|(c, _)| *c == code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    fn catalogue() -> BTreeSet<&'static str> {
        CODES.iter().map(|(c, _)| *c).collect()
    }

    #[test]
    fn codes_are_listed_once() {
        assert_eq!(catalogue().len(), CODES.len(), "a code is listed twice");
    }

    #[test]
    fn the_readme_lists_exactly_the_catalogue() {
        let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
        let section = readme.split("\n## Error codes\n").nth(1).expect("README has an 'Error codes' section");
        let section = section.split("\n## ").next().unwrap_or(section);
        let listed: BTreeSet<&str> =
            section.lines().filter_map(|l| l.strip_prefix("| `")).filter_map(|l| l.split('`').next()).collect();
        assert_eq!(listed, catalogue(), "README's error codes differ from codes::CODES");
    }

    #[test]
    fn every_outcome_code_is_catalogued() {
        for code in crate::runtime::ErrorCode::ALL {
            assert!(is_known(code.as_str()), "{code}");
        }
        use crate::runtime::ComponentError as C;
        for e in [
            C::NotWasm,
            C::TooLarge(0),
            C::CoreModule,
            C::Invalid(String::new()),
            C::ExceedsHostLimits(String::new()),
            C::IncompatibleVersion { found: String::new() },
            C::WrongWorld(String::new()),
            C::UnsupportedImport(String::new()),
        ] {
            assert!(is_known(e.code()), "{}", e.code());
        }
        use crate::store::StoreError as S;
        for e in [
            S::Locked("x".into()),
            S::Corrupt { path: "x".into(), detail: String::new() },
            S::SchemaTooNew { path: "x".into(), found: 9 },
            S::NotFound(String::new()),
            S::Invalid(String::new()),
            S::Conflict(String::new()),
            S::Db(String::new()),
        ] {
            assert!(is_known(e.code()), "{}", e.code());
        }
        use crate::pipeline::PipelineError as P;
        for e in [
            P::DepthExceeded(String::new()),
            P::NotFound(String::new()),
            P::AlreadyExists(String::new()),
            P::Invalid(String::new()),
            P::UnknownEntity(String::new()),
            P::UnknownMessage(String::new()),
            P::Conflict(String::new()),
            P::WriteLimit(String::new()),
        ] {
            assert!(is_known(e.code()), "{}", e.code());
        }
    }

    /// Every code literal the source hands to an error constructor is catalogued.
    #[test]
    fn every_code_in_the_source_is_catalogued() {
        fn walk(dir: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("codes.rs") {
                    out.push(std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        let mut sources = Vec::new();
        walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut sources);
        let markers = ["CliError::new(\"", "JobRun::failed(\"", "JobRun::retry(\"", "code: \"", "code: Some(\""];
        let mut found = BTreeSet::new();
        for text in &sources {
            for marker in markers {
                for piece in text.split(marker).skip(1) {
                    found.insert(piece.split('"').next().unwrap_or("").to_owned());
                }
            }
            // ApiError::new(StatusCode::X, "code", ...)
            for piece in text.split("ApiError::new(StatusCode::").skip(1) {
                if let Some(code) = piece.split('"').nth(1) {
                    found.insert(code.to_owned());
                }
            }
        }
        let unknown: Vec<&String> = found.iter().filter(|c| !is_known(c)).collect();
        assert!(unknown.is_empty(), "codes in the source missing from codes::CODES: {unknown:?}");
        assert!(found.len() > 20, "the scan found the codes: {found:?}");
    }
}
