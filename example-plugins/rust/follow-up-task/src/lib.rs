//! PostOperation Create of `account`: creates a follow-up `task` regarding the new
//! account through the organization service, due a week after the account was created.

use plughost_sdk::prelude::*;

const WEEK_MS: i64 = 7 * 24 * 60 * 60 * 1000;

struct FollowUpTask;

impl Plugin for FollowUpTask {
    fn execute(ctx: &mut Context) -> Result<(), PluginError> {
        let account = ctx.target().ok_or_else(|| PluginError::permanent("expected a Target record"))?;
        let id = match ctx.output("id") {
            Some(ParameterValue::Value(Value::Guid(id))) => id.clone(),
            _ => {
                ctx.entity_id().map(str::to_owned).ok_or_else(|| PluginError::permanent("the new account has no id"))?
            }
        };
        let name = account.text("name").unwrap_or("the new account").to_owned();

        let mut task = Entity::new("task");
        task.set("subject", format!("Follow up with {name}"));
        task.set("regardingobjectid", EntityReference::new("account", &id));
        task.set("scheduledend", Value::DateTime(ctx.raw().operation_created_on + WEEK_MS));
        let task_id = service::create(&task)?;

        trace!("created follow-up task {task_id} for account {id}");
        ctx.set_shared("followup_task_id", Value::Guid(task_id.clone()));
        ctx.set_output("followup_task_id", ParameterValue::Value(Value::Guid(task_id)));
        Ok(())
    }
}

export_plugin!(FollowUpTask);
