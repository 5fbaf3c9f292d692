//! A plug-in that misbehaves on purpose, chosen by the step's configuration string.
//! The tests use it to prove that each kind of misbehaviour fails alone, with its
//! own error code, while the host stays up.
//!
//! | configuration | behaviour |
//! |---|---|
//! | (none), `ok` | succeeds, output `message` = "ok" |
//! | `fail` / `retry` | returns a permanent / retryable plug-in error |
//! | `loop` | spins forever (fuel or timeout stops it) |
//! | `sleep-loop` | spins forever calling the host (timeout counts time in host calls) |
//! | `memory` | allocates until the memory limit stops it |
//! | `recursion` | recurses until the stack overflows |
//! | `trap` | panics (a wasm trap) |
//! | `trace-flood` | traces forever |
//! | `stdout-flood` | prints to stdout forever |
//! | `huge-output` | returns a 16 MiB output parameter |
//! | `call-storm` | calls the organization service forever |
//! | `bad-output` | returns a guid value that is not a GUID |
//! | `stdio` | prints one line to stdout and one to stderr, then succeeds |
//! | `sleep:MS` | sleeps MS milliseconds in WASI (`std::thread::sleep`), then succeeds |
//! | `spin:MS` | spins on the clock for MS milliseconds, then succeeds (a slow job) |
//! | `exit:N` | calls `std::process::exit(N)` |
//! | `big-writes:KIB` | creates `blob` records of KIB KiB until a write fails, then fails with its message |

use std::hint::black_box;
use std::io::Write;

use plughost_sdk::prelude::*;

struct Hostile;

impl Plugin for Hostile {
    fn execute(ctx: &mut Context) -> Result<(), PluginError> {
        let config = ctx.configuration().unwrap_or("ok").to_owned();
        if let Some((mode, arg)) = config.split_once(':') {
            let n: u64 =
                arg.parse().map_err(|_| PluginError::permanent(format!("hostile: bad number in '{config}'")))?;
            match mode {
                "sleep" => std::thread::sleep(std::time::Duration::from_millis(n)),
                "spin" => {
                    let until = std::time::Instant::now() + std::time::Duration::from_millis(n);
                    while std::time::Instant::now() < until {
                        black_box(0);
                    }
                }
                "exit" => std::process::exit(n as i32),
                "big-writes" => {
                    let body = "x".repeat((n as usize) << 10);
                    for i in 0.. {
                        let mut blob = Entity::new("blob");
                        blob.set("body", body.clone());
                        if let Err(e) = service::create(&blob) {
                            return Err(PluginError::permanent(format!("hostile: write {i} failed: {e:?}")));
                        }
                    }
                }
                other => return Err(PluginError::permanent(format!("hostile: unknown mode '{other}'"))),
            }
            ctx.set_output("message", ParameterValue::Value(Value::Text("ok".into())));
            return Ok(());
        }
        match config.as_str() {
            "ok" => {}
            "fail" => return Err(PluginError::permanent("hostile: failing on purpose")),
            "retry" => return Err(PluginError::retryable("hostile: try again later")),
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = black_box(i.wrapping_add(1));
                }
            }
            "sleep-loop" => loop {
                trace!("");
            },
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            "recursion" => {
                black_box(recurse(black_box(u64::MAX)));
            }
            "trap" => panic!("hostile: trapping on purpose"),
            "trace-flood" => loop {
                trace!("{}", "flood ".repeat(100));
            },
            "stdout-flood" => loop {
                println!("{}", "flood ".repeat(100));
            },
            "huge-output" => {
                let big = "x".repeat(16 << 20);
                ctx.set_output("big", ParameterValue::Value(Value::Text(big)));
            }
            "call-storm" => loop {
                let _ =
                    service::retrieve(&EntityReference::new("account", "00000000-0000-0000-0000-000000000000"), &[]);
            },
            "bad-output" => {
                ctx.set_output("id", ParameterValue::Value(Value::Guid("not-a-guid".into())));
            }
            "stdio" => {
                println!("hello from stdout");
                let _ = writeln!(std::io::stderr(), "hello from stderr");
            }
            other => return Err(PluginError::permanent(format!("hostile: unknown configuration '{other}'"))),
        }
        ctx.set_output("message", ParameterValue::Value(Value::Text("ok".into())));
        Ok(())
    }
}

/// Not a tail call: every frame stays on the stack.
fn recurse(n: u64) -> u64 {
    if n == 0 { 0 } else { 1 + black_box(recurse(black_box(n - 1))) }
}

export_plugin!(Hostile);
