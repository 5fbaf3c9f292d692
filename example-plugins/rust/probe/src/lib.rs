//! A plug-in that shows the tests what the pipeline gave it, chosen by the step's
//! configuration string.
//!
//! | configuration | behaviour |
//! |---|---|
//! | `audit` | creates an `audit` record with the message, stage, depth, the `name` of the pre-image `before` and post-image `after`, and the shared variable `note` |
//! | `share` | sets the shared variable `note` to "shared by probe" |
//! | `update-self` | updates its own primary record (an infinite loop on Update steps) |
//! | `greet` | implements a custom message: input `Name` -> output `Greeting` |
//! | `uppercase` | upper-cases the Target's `name` |
//! | `count` | outputs `count`: how many times this instance has run (shows instance reuse) |
//! | `slow-audit` | works for half a second, then does what `audit` does (time to cancel it while it runs) |
//! | `append` | appends the Target's `name` to its record's `description` (shows execution order) |
//! | `whoami` | a custom message: outputs `UserId` and `InitiatingUserId` (shows run-as) |
//! | `peek` | a custom message: reads every record of the entity named by input `Entity` through the service, outputs `Names` (comma-separated, sorted) — what the user it runs as may read |

use plughost_sdk::prelude::*;

struct Probe;

/// Instance state, on purpose: only `count` reads it.
static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Plugin for Probe {
    fn execute(ctx: &mut Context) -> Result<(), PluginError> {
        let mut mode = ctx.configuration().unwrap_or_default();
        if mode == "slow-audit" {
            let started = std::time::Instant::now();
            while started.elapsed() < std::time::Duration::from_millis(500) {
                std::hint::spin_loop();
            }
            mode = "audit";
        }
        match mode {
            "audit" => {
                let mut audit = Entity::new("audit");
                audit.set("message", ctx.message());
                audit.set("stage", i64::from(ctx.raw().stage as u8));
                audit.set("depth", i64::from(ctx.depth()));
                audit.set("before", ctx.pre_image("before").and_then(|e| e.text("name")).map(str::to_owned));
                audit.set("after", ctx.post_image("after").and_then(|e| e.text("name")).map(str::to_owned));
                let note = match ctx.shared("note") {
                    Some(Value::Text(t)) => Some(t.clone()),
                    _ => None,
                };
                audit.set("note", note);
                service::create(&audit)?;
            }
            "share" => ctx.set_shared("note", "shared by probe"),
            "update-self" => {
                let id = ctx.entity_id().ok_or_else(|| PluginError::permanent("no primary record"))?.to_owned();
                let mut me = Entity::new(ctx.entity_name()).with_id(&id);
                me.set("description", format!("touched at depth {}", ctx.depth()));
                service::update(&me)?;
            }
            "greet" => {
                let name = match ctx.input("Name") {
                    Some(ParameterValue::Value(Value::Text(n))) => n.clone(),
                    _ => return Err(PluginError::permanent("Greet needs a text parameter 'Name'")),
                };
                ctx.set_output("Greeting", ParameterValue::Value(Value::Text(format!("Hello, {name}!"))));
            }
            "uppercase" => {
                let mut target = ctx.target().cloned().ok_or_else(|| PluginError::permanent("no Target"))?;
                if let Some(name) = target.text("name").map(str::to_uppercase) {
                    target.set("name", name);
                }
                ctx.set_target(target);
            }
            "count" => {
                let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                ctx.set_output("count", ParameterValue::Value(Value::Integer(i64::from(n))));
            }
            "append" => {
                let id = ctx.entity_id().ok_or_else(|| PluginError::permanent("no primary record"))?.to_owned();
                let name = ctx.target().and_then(|t| t.text("name")).unwrap_or_default().to_owned();
                let current =
                    service::retrieve(&EntityReference::new(ctx.entity_name(), &id), &["description".into()])?;
                let description = match current.text("description") {
                    Some(d) if !d.is_empty() => format!("{d},{name}"),
                    _ => name,
                };
                let mut me = Entity::new(ctx.entity_name()).with_id(&id);
                me.set("description", description);
                service::update(&me)?;
            }
            "whoami" => {
                let (user, initiating) = (ctx.user_id().to_owned(), ctx.initiating_user_id().to_owned());
                ctx.set_output("UserId", ParameterValue::Value(Value::Text(user)));
                ctx.set_output("InitiatingUserId", ParameterValue::Value(Value::Text(initiating)));
            }
            "peek" => {
                let entity = match ctx.input("Entity") {
                    Some(ParameterValue::Value(Value::Text(e))) => e.clone(),
                    _ => return Err(PluginError::permanent("peek needs a text parameter 'Entity'")),
                };
                let found = service::retrieve_multiple(&Query::new(&entity))?;
                let mut names: Vec<String> =
                    found.entities.iter().filter_map(|e| e.text("name").map(str::to_owned)).collect();
                names.sort();
                ctx.set_output("Names", ParameterValue::Value(Value::Text(names.join(","))));
            }
            other => return Err(PluginError::permanent(format!("probe: unknown configuration '{other}'"))),
        }
        Ok(())
    }
}

export_plugin!(Probe);
