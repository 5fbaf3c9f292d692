//! PreOperation Create of `account`: requires a name, refuses a negative credit
//! limit, and fills `accountnumber` when the caller left it empty.
//!
//! The step's configuration string is the account-number prefix (default "AC-").

use plughost_sdk::prelude::*;

struct AccountNumber;

impl Plugin for AccountNumber {
    fn execute(ctx: &mut Context) -> Result<(), PluginError> {
        let mut account = ctx.target().cloned().ok_or_else(|| PluginError::permanent("expected a Target record"))?;
        let name = account.text("name").map(str::trim).unwrap_or_default().to_owned();
        if name.is_empty() {
            return Err(PluginError::permanent("An account needs a name: set the 'name' attribute"));
        }
        if let Some(Value::Money(limit)) = account.get("creditlimit") {
            if limit.starts_with('-') {
                return Err(PluginError::permanent(format!("The credit limit cannot be negative (got {limit})")));
            }
        }
        if account.text("accountnumber").is_none_or(str::is_empty) {
            let prefix = ctx.configuration().filter(|c| !c.is_empty()).unwrap_or("AC-");
            let number = format!("{prefix}{:08X}", fnv1a(name.as_bytes()));
            trace!("assigned account number {number} to '{name}'");
            account.set("accountnumber", number);
        }
        ctx.set_target(account);
        Ok(())
    }
}

/// A stable 32-bit hash, so the same name always gets the same number.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

export_plugin!(AccountNumber);
