//! `plughost users|keys|roles|audit`: identities, API keys, security roles and the
//! audit log (on a running server: the `security` and `audit` privileges).

use std::process::ExitCode;

use plughost::accounts::{Grant, KeySpec};
use plughost::clock::format_time;
use plughost::security::{Action, Capability, Depth, EntityPrivilege, Role};
use plughost::server::RolesBody;

use super::{CliError, Global};

#[derive(clap::Subcommand)]
pub(crate) enum Users {
    /// Create a user with roles (system-administrator, system-customizer, basic-user,
    /// worker, or custom roles).
    Create {
        name: String,
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
    },
    List,
    /// Disable a user: its keys stop working at once.
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    /// Give a user roles, or take them away.
    Roles {
        name: String,
        #[arg(long = "add", value_name = "ROLE")]
        add: Vec<String>,
        #[arg(long = "remove", value_name = "ROLE")]
        remove: Vec<String>,
    },
}

#[derive(clap::Subcommand)]
pub(crate) enum Keys {
    /// Create an API key for a user; it is printed once, and only its hash is stored.
    Create {
        #[arg(long)]
        user: String,
        /// What the key is for (shown by `keys list`).
        #[arg(long, default_value = "")]
        label: String,
        /// Expiry: a duration (30d, 12h, 90m) or an RFC 3339 time.
        #[arg(long)]
        expires: Option<String>,
    },
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a key by id: it stops working at once.
    Revoke { id: uuid::Uuid },
}

#[derive(clap::Subcommand)]
pub(crate) enum Roles {
    List,
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Grant privileges to a custom role: `--privilege read --privilege write --entity
    /// account --depth organization`, and/or capabilities (`--capability audit`).
    Grant {
        role: String,
        /// An entity, or `*` for every entity.
        #[arg(long, default_value = "*")]
        entity: String,
        /// create, read, write or delete (repeatable).
        #[arg(long = "privilege", value_name = "PRIVILEGE")]
        privileges: Vec<String>,
        /// user (records the user owns) or organization (every record).
        #[arg(long, default_value = "user")]
        depth: String,
        /// registration, customization, manage_jobs, service, security, audit, worker.
        #[arg(long = "capability", value_name = "CAPABILITY")]
        capabilities: Vec<String>,
    },
}

/// `plughost whoami`.
#[derive(clap::Args)]
pub(crate) struct Whoami {}

impl Whoami {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let p = g.backend()?.whoami()?;
        g.print(&p, || {
            let mut caps: Vec<&str> =
                Capability::ALL.iter().filter(|c| p.privileges.has(**c)).map(|c| c.name()).collect();
            if caps.is_empty() {
                caps.push("none");
            }
            format!(
                "user          {} ({})\nroles         {}\ncapabilities  {}\n",
                p.name,
                p.user_id,
                p.role_list(),
                caps.join(", ")
            )
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(clap::Subcommand)]
pub(crate) enum Audit {
    /// Administrative actions, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Entries older than this entry id (the last one of the previous page).
        #[arg(long)]
        before: Option<uuid::Uuid>,
    },
}

fn invalid(m: String) -> CliError {
    CliError::new("invalid", m)
}

fn role_text(r: &Role) -> String {
    let mut grants: Vec<String> = r.capabilities.iter().map(|c| c.name().to_owned()).collect();
    grants.extend(r.privileges.iter().map(|p| format!("{}:{}:{}", p.action.name(), p.entity, p.depth.name())));
    format!(
        "{:<22} {}{}\n  {}\n",
        r.name,
        r.description,
        if r.builtin { " (built-in)" } else { "" },
        if grants.is_empty() { "no privileges".into() } else { grants.join(", ") }
    )
}

impl Users {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let b = g.backend()?;
        let user = match self {
            Users::List => {
                let users = b.users()?;
                return g
                    .print(&users, || {
                        users
                            .iter()
                            .map(|u| {
                                format!(
                                    "{:<24} {}  {}{}\n",
                                    u.name,
                                    u.id,
                                    u.roles.join(","),
                                    if u.disabled { "  (disabled)" } else { "" }
                                )
                            })
                            .collect()
                    })
                    .map(|()| ExitCode::SUCCESS);
            }
            Users::Create { name, roles } => b.create_user(&name, &roles)?,
            Users::Disable { name } => b.user_action(&name, "disable", RolesBody::default())?,
            Users::Enable { name } => b.user_action(&name, "enable", RolesBody::default())?,
            Users::Roles { name, add, remove } => b.user_action(&name, "roles", RolesBody { add, remove })?,
        };
        g.print(&user, || {
            format!(
                "user {} ({}): roles {}{}",
                user.name,
                user.id,
                if user.roles.is_empty() { "none".into() } else { user.roles.join(", ") },
                if user.disabled { ", disabled" } else { "" }
            )
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

impl Keys {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let b = g.backend()?;
        match self {
            Keys::Create { user, label, expires } => {
                let key = b.create_key(&KeySpec { user, label, expires })?;
                g.print(&key, || {
                    format!(
                        "{}\n(key {} of user {}: shown once, only its hash is stored{})",
                        key.secret,
                        key.key.id,
                        key.key.user,
                        key.key.expires_on.map(|e| format!("; expires {}", format_time(e))).unwrap_or_default()
                    )
                })?;
            }
            Keys::List { user } => {
                let keys = b.keys(user.as_deref())?;
                g.print(&keys, || {
                    keys.iter()
                        .map(|k| {
                            let state = match (k.revoked_on, k.expires_on) {
                                (Some(r), _) => format!("revoked {}", format_time(r)),
                                (None, Some(e)) => format!("expires {}", format_time(e)),
                                (None, None) => "no expiry".into(),
                            };
                            format!("{}  {:<16} {:<20} {state}\n", k.id, k.user, k.label)
                        })
                        .collect()
                })?;
            }
            Keys::Revoke { id } => {
                let key = b.revoke_key(id)?;
                g.print(&key, || format!("key {} of user {} revoked", key.id, key.user))?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl Roles {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let b = g.backend()?;
        let role = match self {
            Roles::List => {
                let roles = b.roles()?;
                return g.print(&roles, || roles.iter().map(role_text).collect()).map(|()| ExitCode::SUCCESS);
            }
            Roles::Create { name, description } => b.create_role(&name, &description)?,
            Roles::Grant { role, entity, privileges, depth, capabilities } => {
                let depth = Depth::parse(&depth).map_err(invalid)?;
                let privileges = privileges
                    .iter()
                    .map(|p| {
                        Ok(EntityPrivilege {
                            entity: entity.clone(),
                            action: Action::parse(p).map_err(invalid)?,
                            depth,
                        })
                    })
                    .collect::<Result<Vec<_>, CliError>>()?;
                let capabilities = capabilities
                    .iter()
                    .map(|c| Capability::parse(c).map_err(invalid))
                    .collect::<Result<Vec<_>, _>>()?;
                if privileges.is_empty() && capabilities.is_empty() {
                    return Err(invalid("nothing to grant: give --privilege and/or --capability".into()));
                }
                b.grant(&role, &Grant { privileges, capabilities })?
            }
        };
        g.print(&role, || role_text(&role))?;
        Ok(ExitCode::SUCCESS)
    }
}

impl Audit {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let Audit::List { limit, before } = self;
        let entries = g.backend()?.audit(before, limit)?;
        g.print(&entries, || {
            entries
                .iter()
                .map(|e| {
                    format!(
                        "{}  {:<20} {:<20} {:<28} {}{}\n",
                        format_time(e.at),
                        e.user,
                        e.action,
                        e.target,
                        e.outcome,
                        e.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
                    )
                })
                .collect()
        })?;
        Ok(ExitCode::SUCCESS)
    }
}
