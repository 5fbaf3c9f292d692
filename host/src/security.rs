//! Who is calling and what they may do: users, API keys, security roles with
//! Dataverse's privilege depths, and the audit log's entries. Pure rules here; the
//! store keeps the rows (`store::identity`), the server authenticates, the pipeline
//! authorizes each data operation.
//!
//! **Invariants:** a key is stored only as its blake3 hash; the nil user is the
//! host itself (Dataverse's SYSTEM: local CLI commands and the deletion service),
//! which no key can name; a principal's privileges are the union of its roles'.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{EntityReference, Value};

/// The entity of user references (`ownerid`, `createdby`, `modifiedby`).
pub const USER_ENTITY: &str = "systemuser";
/// An entity privilege granted on this name applies to every entity.
pub const ANY_ENTITY: &str = "*";
/// Most roles one user may hold, most privileges one role may grant.
pub const MAX_ROLES_PER_USER: usize = 64;
pub const MAX_PRIVILEGES_PER_ROLE: usize = 1024;
/// The user every request made by the host itself runs as.
pub const SYSTEM_USER: Uuid = Uuid::nil();
/// The names of the users the admin and worker tokens belong to.
pub const ADMIN_USER: &str = "admin";
pub const WORKER_USER: &str = "worker";

/// What a data operation does to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Read,
    Write,
    Delete,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Create, Action::Read, Action::Write, Action::Delete];

    pub fn name(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Result<Action, String> {
        Action::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("unknown privilege '{s}': one of create, read, write, delete"))
    }
}

/// How far an entity privilege reaches (Dataverse's access levels, kept to two).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Depth {
    /// Records the user owns.
    User,
    /// Every record.
    Organization,
}

impl Depth {
    pub fn name(self) -> &'static str {
        match self {
            Depth::User => "user",
            Depth::Organization => "organization",
        }
    }

    pub fn parse(s: &str) -> Result<Depth, String> {
        match s {
            "user" => Ok(Depth::User),
            "organization" | "org" => Ok(Depth::Organization),
            _ => Err(format!("unknown depth '{s}': user or organization")),
        }
    }
}

/// Privileges that are not about records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Register and unregister assemblies, plug-ins and steps.
    Registration,
    /// Define entities.
    Customization,
    /// See and act on every user's system jobs (without it: one's own).
    ManageJobs,
    /// Pause and resume the asynchronous service; see the workers.
    Service,
    /// Users, keys and roles.
    Security,
    /// Read the audit log.
    Audit,
    /// The worker routes: lease, renew, complete, read for a leased job.
    Worker,
}

impl Capability {
    pub const ALL: [Capability; 7] = [
        Capability::Registration,
        Capability::Customization,
        Capability::ManageJobs,
        Capability::Service,
        Capability::Security,
        Capability::Audit,
        Capability::Worker,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::Registration => "registration",
            Capability::Customization => "customization",
            Capability::ManageJobs => "manage_jobs",
            Capability::Service => "service",
            Capability::Security => "security",
            Capability::Audit => "audit",
            Capability::Worker => "worker",
        }
    }

    pub fn parse(s: &str) -> Result<Capability, String> {
        Capability::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Capability::ALL.iter().map(|c| c.name()).collect();
            format!("unknown capability '{s}': one of {}", names.join(", "))
        })
    }
}

/// One entity privilege of a role: `action` on `entity` (or every entity) at `depth`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntityPrivilege {
    pub entity: String,
    pub action: Action,
    pub depth: Depth,
}

/// A security role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    pub description: String,
    /// Built-in roles are defined by the host and cannot change.
    pub builtin: bool,
    pub capabilities: BTreeSet<Capability>,
    pub privileges: Vec<EntityPrivilege>,
}

pub const SYSTEM_ADMINISTRATOR: &str = "system-administrator";
pub const SYSTEM_CUSTOMIZER: &str = "system-customizer";
pub const BASIC_USER: &str = "basic-user";
pub const WORKER_ROLE: &str = "worker";

fn every_entity(depth: Depth) -> Vec<EntityPrivilege> {
    Action::ALL.into_iter().map(|action| EntityPrivilege { entity: ANY_ENTITY.into(), action, depth }).collect()
}

/// The roles every store has, as Dataverse's (kept small).
pub fn builtin_roles() -> Vec<Role> {
    let role = |name: &str, description: &str, capabilities: &[Capability], privileges| Role {
        name: name.into(),
        description: description.into(),
        builtin: true,
        capabilities: capabilities.iter().copied().collect(),
        privileges,
    };
    vec![
        role(
            SYSTEM_ADMINISTRATOR,
            "everything: every record, registration, metadata, every job, the service, users and roles, the audit log",
            // Every capability but the worker's: an administrator does not lease jobs.
            &Capability::ALL.into_iter().filter(|c| *c != Capability::Worker).collect::<Vec<_>>(),
            every_entity(Depth::Organization),
        ),
        role(
            SYSTEM_CUSTOMIZER,
            "metadata and registration; no records",
            &[Capability::Registration, Capability::Customization],
            Vec::new(),
        ),
        role(
            BASIC_USER,
            "create, read, write and delete the records one owns; one's own jobs",
            &[],
            every_entity(Depth::User),
        ),
        role(
            WORKER_ROLE,
            "the worker routes only: lease, renew, complete, read for a leased job",
            &[Capability::Worker],
            Vec::new(),
        ),
    ]
}

pub fn builtin_role(name: &str) -> Option<Role> {
    builtin_roles().into_iter().find(|r| r.name == name)
}

/// What one user may do: the union of its roles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "PrivilegesWire", from = "PrivilegesWire")]
pub struct Privileges {
    entities: BTreeMap<(String, Action), Depth>,
    capabilities: BTreeSet<Capability>,
    /// The host itself: everything.
    all: bool,
}

impl Privileges {
    pub fn all() -> Privileges {
        Privileges { all: true, ..Privileges::default() }
    }

    pub fn of(roles: &[Role]) -> Privileges {
        let mut p = Privileges::default();
        for role in roles {
            p.capabilities.extend(role.capabilities.iter().copied());
            for g in &role.privileges {
                let depth = p.entities.entry((g.entity.clone(), g.action)).or_insert(g.depth);
                *depth = (*depth).max(g.depth);
            }
        }
        p
    }

    /// How far `action` on `entity` reaches, if at all.
    pub fn depth(&self, entity: &str, action: Action) -> Option<Depth> {
        if self.all {
            return Some(Depth::Organization);
        }
        let named = self.entities.get(&(entity.to_owned(), action)).copied();
        let any = self.entities.get(&(ANY_ENTITY.to_owned(), action)).copied();
        named.max(any)
    }

    pub fn has(&self, c: Capability) -> bool {
        self.all || self.capabilities.contains(&c)
    }

    /// True when the user holds some privilege on records (custom messages need one).
    pub fn any_data(&self) -> bool {
        self.all || !self.entities.is_empty()
    }
}

/// `Privileges` on the wire (JSON has no tuple keys).
#[derive(Clone, Serialize, Deserialize)]
struct PrivilegesWire {
    grants: Vec<EntityPrivilege>,
    capabilities: BTreeSet<Capability>,
    all: bool,
}

impl From<Privileges> for PrivilegesWire {
    fn from(p: Privileges) -> Self {
        let grants = p.entities.into_iter().map(|((entity, action), depth)| EntityPrivilege { entity, action, depth });
        PrivilegesWire { grants: grants.collect(), capabilities: p.capabilities, all: p.all }
    }
}

impl From<PrivilegesWire> for Privileges {
    fn from(w: PrivilegesWire) -> Self {
        let entities = w.grants.into_iter().map(|g| ((g.entity, g.action), g.depth)).collect();
        Privileges { entities, capabilities: w.capabilities, all: w.all }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub user_id: Uuid,
    pub name: String,
    pub roles: Vec<String>,
    pub privileges: Privileges,
}

impl Principal {
    /// The host itself (local CLI commands, the deletion service).
    pub fn system() -> Principal {
        Principal { user_id: SYSTEM_USER, name: "SYSTEM".into(), roles: Vec::new(), privileges: Privileges::all() }
    }

    /// The error of a missing capability: names it, and who lacks it.
    pub fn require(&self, c: Capability) -> Result<(), Denied> {
        if self.privileges.has(c) {
            Ok(())
        } else {
            Err(Denied(format!(
                "user '{}' lacks the '{}' privilege (roles: {})",
                self.name,
                c.name(),
                self.role_list()
            )))
        }
    }

    pub fn role_list(&self) -> String {
        if self.roles.is_empty() { "none".into() } else { self.roles.join(", ") }
    }

    /// A denial of `action` on `entity`: what the user lacks, or has at too shallow a depth.
    pub fn denied(&self, entity: &str, action: Action) -> Denied {
        let has = self.privileges.depth(entity, action);
        let what = match has {
            Some(d) => format!(
                "has '{}' on {entity} at {} depth only, which does not reach this record",
                action.name(),
                d.name()
            ),
            None => format!("lacks the '{}' privilege on {entity}", action.name()),
        };
        Denied(format!("user '{}' {what} (roles: {})", self.name, self.role_list()))
    }
}

/// A refused operation: `403 forbidden`, naming the missing privilege.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// A reference to a user, as `ownerid`, `createdby` and `modifiedby` hold it.
pub fn user_ref(id: Uuid) -> Value {
    Value::Reference(EntityReference { logical_name: USER_ENTITY.into(), id })
}

/// The user a record attribute names, if it names one.
pub fn user_of(v: Option<&Value>) -> Option<Uuid> {
    match v {
        Some(Value::Reference(r)) if r.logical_name == USER_ENTITY => Some(r.id),
        Some(Value::Guid(id)) => Some(*id),
        _ => None,
    }
}

/// A new API key's secret: `phk_` and 256 random bits (two v4 UUIDs' 244) in hex.
pub fn new_key_secret() -> String {
    format!("phk_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// What the store keeps of a key: its blake3 hash (keys are random, so a fast hash
/// suffices; the secret itself is never stored).
pub fn key_hash(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// A user, as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    pub created_on: i64,
}

/// An API key, as listed (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: Uuid,
    pub user_id: Uuid,
    pub user: String,
    pub label: String,
    pub created_on: i64,
    pub expires_on: Option<i64>,
    pub revoked_on: Option<i64>,
}

impl ApiKey {
    pub fn usable_at(&self, now: i64) -> bool {
        self.revoked_on.is_none() && self.expires_on.is_none_or(|e| e > now)
    }
}

/// A key just created: the only time its secret is shown.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewKey {
    pub key: ApiKey,
    pub secret: String,
}

/// One administrative action: who, when, what, on what, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: Uuid,
    /// UTC milliseconds.
    pub at: i64,
    pub user_id: Uuid,
    pub user: String,
    /// e.g. `register`, `steps.remove`, `keys.revoke`, `jobs.cancel`, `service.pause`.
    pub action: String,
    pub target: String,
    /// `ok`, or the error code it failed with.
    pub outcome: String,
    pub message: Option<String>,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks a user or role name: 1–64 characters of a-z, 0-9, `-`, `_`, `.`, `@`.
pub fn check_principal_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("{what} name '{name}' must be 1 to 64 characters of a-z, 0-9, '-', '_', '.', '@'"))
    }
}

/// Parses a key's lifetime: `30d`, `12h`, `90m`, or an RFC 3339 time; gives the expiry
/// (UTC ms) from `now`.
pub fn parse_expiry(s: &str, now: i64) -> Result<i64, String> {
    let bad = || format!("bad expiry '{s}': a duration such as 30d, 12h or 90m, or an RFC 3339 time");
    let unit = |c: char| match c {
        'd' => Some(86_400_000i64),
        'h' => Some(3_600_000),
        'm' => Some(60_000),
        _ => None,
    };
    if let Some(last) = s.chars().last()
        && let Some(ms) = unit(last)
        && let Ok(n) = s[..s.len() - 1].parse::<i64>()
    {
        if n <= 0 || n > 36_500 * 86_400_000 / ms {
            return Err(format!("bad expiry '{s}': between 1 and 100 years' worth"));
        }
        return Ok(now + n * ms);
    }
    let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|_| bad())?.timestamp_millis();
    if t <= now {
        return Err(format!("expiry '{s}' is in the past"));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges_are_the_union_of_roles_at_the_deeper_depth() {
        let custom = Role {
            name: "accounts".into(),
            description: String::new(),
            builtin: false,
            capabilities: BTreeSet::new(),
            privileges: vec![EntityPrivilege {
                entity: "account".into(),
                action: Action::Read,
                depth: Depth::Organization,
            }],
        };
        let p = Privileges::of(&[builtin_role(BASIC_USER).unwrap(), custom]);
        assert_eq!(p.depth("account", Action::Read), Some(Depth::Organization));
        assert_eq!(p.depth("contact", Action::Read), Some(Depth::User));
        assert_eq!(p.depth("account", Action::Delete), Some(Depth::User));
        assert!(!p.has(Capability::Registration));
        let c = Privileges::of(&[builtin_role(SYSTEM_CUSTOMIZER).unwrap()]);
        assert_eq!(c.depth("account", Action::Read), None);
        assert!(c.has(Capability::Registration) && !c.any_data());
        assert!(Privileges::all().has(Capability::Worker));
    }

    #[test]
    fn names_and_expiries_are_checked() {
        assert!(check_principal_name("user", "ann.lee@example").is_ok());
        assert!(check_principal_name("user", "Ann").is_err());
        assert!(check_principal_name("user", "").is_err());
        assert_eq!(parse_expiry("2d", 0), Ok(2 * 86_400_000));
        assert!(parse_expiry("0d", 0).is_err());
        assert!(parse_expiry("soon", 0).is_err());
        assert!(parse_expiry("2000-01-01T00:00:00Z", crate::clock::now_ms()).is_err());
        assert!(parse_expiry("99999999999999999d", 0).is_err());
    }

    #[test]
    fn a_key_is_stored_as_a_hash_that_does_not_contain_it() {
        let s = new_key_secret();
        assert!(s.starts_with("phk_") && s.len() == 68);
        assert_ne!(new_key_secret(), s);
        let h = key_hash(&s);
        assert!(!h.windows(8).any(|w| s.as_bytes().windows(8).any(|x| x == w)));
    }
}
