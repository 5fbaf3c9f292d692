//! Users, API keys (by hash), custom security roles and the audit log, on both
//! engines (kv tables). The rules of who may do what are in `crate::security`.
//!
//! **Invariants:** a key's secret is never stored, only `security::key_hash`; every
//! change here bumps the security generation in `meta`, so servers that cache
//! principals (all of them) drop what changed, on any process sharing the store; a
//! built-in role is never stored and cannot change.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::kv::{ALL_TABLES, Reads, Table, Write};
use super::{META, Result, Store, StoreError, get};
use crate::clock::now_ms;
use crate::codec;
use crate::security::{
    self, ApiKey, AuditEntry, Capability, EntityPrivilege, MAX_PRIVILEGES_PER_ROLE, MAX_ROLES_PER_USER, Principal,
    Privileges, Role, User,
};

const USERS: Table<u128, Vec<u8>> = Table::new(ALL_TABLES[18]);
const USER_NAMES: Table<String, u128> = Table::new(ALL_TABLES[19]);
const ROLES: Table<String, Vec<u8>> = Table::new(ALL_TABLES[20]);
/// Keys by the hash of their secret (what authentication looks up).
const KEYS: Table<[u8; 32], Vec<u8>> = Table::new(ALL_TABLES[21]);
/// A key's id → its hash (listing and revoking by id).
const KEY_IDS: Table<u128, [u8; 32]> = Table::new(ALL_TABLES[22]);
/// Audit entries by id (UUIDv7: time order).
const AUDIT: Table<u128, Vec<u8>> = Table::new(ALL_TABLES[23]);
/// (owner, job) of every job a user queued: a user's own jobs without a scan.
pub(super) const JOBS_BY_OWNER: Table<(u128, u128), ()> = Table::new(ALL_TABLES[24]);

/// Meta key of the security generation (see the module's invariants).
const SECURITY_GENERATION: &str = "security_generation";
/// Most entries one audit page returns.
pub const MAX_AUDIT_PAGE: usize = 1000;

#[derive(Serialize, Deserialize)]
struct UserRow {
    name: String,
    roles: Vec<String>,
    disabled: bool,
    created_on: i64,
}

#[derive(Serialize, Deserialize)]
struct RoleRow {
    description: String,
    capabilities: Vec<String>,
    /// (entity, action, depth) by name: the stored form does not follow enum order.
    privileges: Vec<(String, String, String)>,
}

#[derive(Serialize, Deserialize)]
struct KeyRow {
    id: Uuid,
    user_id: Uuid,
    label: String,
    created_on: i64,
    expires_on: Option<i64>,
    revoked_on: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct AuditRow {
    at: i64,
    user_id: Uuid,
    user: String,
    action: String,
    target: String,
    outcome: String,
    message: Option<String>,
}

fn user_of_row(id: u128, row: UserRow) -> User {
    User {
        id: Uuid::from_u128(id),
        name: row.name,
        roles: row.roles,
        disabled: row.disabled,
        created_on: row.created_on,
    }
}

fn role_of_row(name: String, row: RoleRow) -> Result<Role> {
    let bad = |m: String| StoreError::Invalid(format!("stored role '{name}': {m}"));
    let capabilities =
        row.capabilities.iter().map(|c| Capability::parse(c)).collect::<std::result::Result<_, _>>().map_err(bad)?;
    let privileges = row
        .privileges
        .iter()
        .map(|(e, a, d)| {
            Ok(EntityPrivilege {
                entity: e.clone(),
                action: security::Action::parse(a).map_err(bad)?,
                depth: security::Depth::parse(d).map_err(bad)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Role { name, description: row.description, builtin: false, capabilities, privileges })
}

fn row_of_role(role: &Role) -> RoleRow {
    RoleRow {
        description: role.description.clone(),
        capabilities: role.capabilities.iter().map(|c| c.name().to_owned()).collect(),
        privileges: role
            .privileges
            .iter()
            .map(|p| (p.entity.clone(), p.action.name().to_owned(), p.depth.name().to_owned()))
            .collect(),
    }
}

fn key_of_row(row: KeyRow, user: String) -> ApiKey {
    ApiKey {
        id: row.id,
        user_id: row.user_id,
        user,
        label: row.label,
        created_on: row.created_on,
        expires_on: row.expires_on,
        revoked_on: row.revoked_on,
    }
}

fn bump(w: &Write<'_>) -> Result<()> {
    let key = SECURITY_GENERATION.to_owned();
    let g = get::<_, u64>(w, &META, &key)?.unwrap_or(0) + 1;
    w.insert(&META, &key, &codec::encode(&g)?)
}

fn user_row(r: &impl Reads, id: u128) -> Result<Option<UserRow>> {
    get(r, &USERS, &id)
}

fn user_id_by_name(r: &impl Reads, name: &str) -> Result<u128> {
    r.get(&USER_NAMES, &name.to_owned())?
        .ok_or_else(|| StoreError::NotFound(format!("no user '{name}' (plughost users list shows them)")))
}

/// A role by name: a built-in one, else a stored one.
fn role_in(r: &impl Reads, name: &str) -> Result<Option<Role>> {
    if let Some(b) = security::builtin_role(name) {
        return Ok(Some(b));
    }
    match get::<_, RoleRow>(r, &ROLES, &name.to_owned())? {
        Some(row) => Ok(Some(role_of_row(name.to_owned(), row)?)),
        None => Ok(None),
    }
}

fn check_roles(r: &impl Reads, roles: &[String]) -> Result<()> {
    if roles.len() > MAX_ROLES_PER_USER {
        return Err(StoreError::Invalid(format!("a user may hold at most {MAX_ROLES_PER_USER} roles")));
    }
    for role in roles {
        if role_in(r, role)?.is_none() {
            return Err(StoreError::NotFound(format!("no role '{role}' (plughost roles list shows them)")));
        }
    }
    Ok(())
}

/// The principal of an enabled user, read in `r`; `None` for an unknown or disabled one.
pub(crate) fn principal_in(r: &impl Reads, user_id: Uuid) -> Result<Option<Principal>> {
    if user_id == security::SYSTEM_USER {
        return Ok(Some(Principal::system()));
    }
    let Some(row) = user_row(r, user_id.as_u128())? else { return Ok(None) };
    if row.disabled {
        return Ok(None);
    }
    let mut roles = Vec::new();
    for name in &row.roles {
        // A role deleted since is no privilege.
        roles.extend(role_in(r, name)?);
    }
    Ok(Some(Principal { user_id, name: row.name, roles: row.roles, privileges: Privileges::of(&roles) }))
}

impl Store {
    /// Changes with every change of users, keys or roles, on any process.
    pub fn security_generation(&self) -> Result<u64> {
        Ok(get::<_, u64>(&self.read()?, &META, &SECURITY_GENERATION.to_owned())?.unwrap_or(0))
    }

    fn change_security<T>(&self, f: impl FnOnce(&Write<'_>) -> Result<T>) -> Result<T> {
        self.write(|w| {
            let out = f(w)?;
            bump(w)?;
            Ok(out)
        })
    }

    pub fn users(&self) -> Result<Vec<User>> {
        let r = self.read()?;
        r.all(&USERS)?.into_iter().map(|(id, v)| Ok(user_of_row(id, codec::decode(&v)?))).collect()
    }

    pub fn user(&self, name: &str) -> Result<User> {
        let r = self.read()?;
        let id = user_id_by_name(&r, name)?;
        let row = user_row(&r, id)?.ok_or_else(|| StoreError::NotFound(format!("no user '{name}'")))?;
        Ok(user_of_row(id, row))
    }

    /// The principal of an enabled user (`None`: unknown or disabled).
    pub fn principal(&self, user_id: Uuid) -> Result<Option<Principal>> {
        principal_in(&self.read()?, user_id)
    }

    pub fn create_user(&self, name: &str, roles: &[String]) -> Result<User> {
        security::check_principal_name("user", name).map_err(StoreError::Invalid)?;
        self.change_security(|w| {
            if w.get(&USER_NAMES, &name.to_owned())?.is_some() {
                return Err(StoreError::Conflict(format!("a user named '{name}' exists")));
            }
            check_roles(w, roles)?;
            let id = Uuid::now_v7();
            let row = UserRow { name: name.to_owned(), roles: dedup(roles), disabled: false, created_on: now_ms() };
            w.insert(&USERS, &id.as_u128(), &codec::encode(&row)?)?;
            w.insert(&USER_NAMES, &name.to_owned(), &id.as_u128())?;
            Ok(user_of_row(id.as_u128(), row))
        })
    }

    /// Enables or disables a user: a disabled user's keys stop working at once.
    pub fn set_user_disabled(&self, name: &str, disabled: bool) -> Result<User> {
        self.update_user(name, |row| {
            row.disabled = disabled;
            Ok(())
        })
    }

    /// Adds roles to a user (`add`) and takes others away (`remove`).
    pub fn change_user_roles(&self, name: &str, add: &[String], remove: &[String]) -> Result<User> {
        self.update_user(name, |row| {
            let mut roles = row.roles.clone();
            roles.extend(add.iter().cloned());
            roles.retain(|r| !remove.contains(r));
            row.roles = dedup(&roles);
            Ok(())
        })
    }

    fn update_user(&self, name: &str, f: impl FnOnce(&mut UserRow) -> Result<()>) -> Result<User> {
        self.change_security(|w| {
            let id = user_id_by_name(w, name)?;
            let mut row = user_row(w, id)?.ok_or_else(|| StoreError::NotFound(format!("no user '{name}'")))?;
            f(&mut row)?;
            check_roles(w, &row.roles)?;
            w.insert(&USERS, &id, &codec::encode(&row)?)?;
            Ok(user_of_row(id, row))
        })
    }

    /// Built-in roles first, then the stored ones by name.
    pub fn roles(&self) -> Result<Vec<Role>> {
        let r = self.read()?;
        let mut out = security::builtin_roles();
        for (name, v) in r.all(&ROLES)? {
            out.push(role_of_row(name, codec::decode(&v)?)?);
        }
        Ok(out)
    }

    pub fn create_role(&self, name: &str, description: &str) -> Result<Role> {
        security::check_principal_name("role", name).map_err(StoreError::Invalid)?;
        self.change_security(|w| {
            if role_in(w, name)?.is_some() {
                return Err(StoreError::Conflict(format!("a role named '{name}' exists")));
            }
            let role = Role {
                name: name.to_owned(),
                description: description.to_owned(),
                builtin: false,
                capabilities: Default::default(),
                privileges: Vec::new(),
            };
            w.insert(&ROLES, &name.to_owned(), &codec::encode(&row_of_role(&role))?)?;
            Ok(role)
        })
    }

    /// Adds entity privileges and capabilities to a custom role; a privilege granted
    /// again at another depth keeps the deeper one.
    pub fn grant(&self, name: &str, privileges: &[EntityPrivilege], capabilities: &[Capability]) -> Result<Role> {
        for p in privileges {
            if p.entity != security::ANY_ENTITY {
                crate::model::check_name(&p.entity).map_err(|m| StoreError::Invalid(format!("entity {m}")))?;
            }
        }
        self.change_security(|w| {
            if security::builtin_role(name).is_some() {
                return Err(StoreError::Invalid(format!("'{name}' is a built-in role and cannot change")));
            }
            let mut role = role_in(w, name)?
                .ok_or_else(|| StoreError::NotFound(format!("no role '{name}' (plughost roles create {name})")))?;
            role.capabilities.extend(capabilities.iter().copied());
            for p in privileges {
                match role.privileges.iter_mut().find(|q| q.entity == p.entity && q.action == p.action) {
                    Some(q) => q.depth = q.depth.max(p.depth),
                    None => role.privileges.push(p.clone()),
                }
            }
            if role.privileges.len() > MAX_PRIVILEGES_PER_ROLE {
                return Err(StoreError::Invalid(format!(
                    "a role may grant at most {MAX_PRIVILEGES_PER_ROLE} privileges"
                )));
            }
            role.privileges.sort();
            w.insert(&ROLES, &name.to_owned(), &codec::encode(&row_of_role(&role))?)?;
            Ok(role)
        })
    }

    /// Stores a key for `user` (by the hash of its secret).
    pub fn create_key(&self, user: &str, label: &str, expires_on: Option<i64>, hash: [u8; 32]) -> Result<ApiKey> {
        self.change_security(|w| add_key(w, user, label, expires_on, hash))
    }

    /// Every key (of one user), never their secrets.
    pub fn keys(&self, user: Option<&str>) -> Result<Vec<ApiKey>> {
        let r = self.read()?;
        let only = user.map(|u| user_id_by_name(&r, u)).transpose()?;
        // One scan of the keys; each user's name read once.
        let mut names: std::collections::HashMap<u128, String> = std::collections::HashMap::new();
        let mut out = Vec::new();
        for (_, v) in r.all(&KEYS)? {
            let row: KeyRow = codec::decode(&v)?;
            let user = row.user_id.as_u128();
            if only.is_some_and(|u| u != user) {
                continue;
            }
            let name = match names.entry(user) {
                std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(user_row(&r, user)?.map(|u| u.name).unwrap_or_default()).clone()
                }
            };
            out.push(key_of_row(row, name));
        }
        out.sort_by_key(|k| k.id);
        Ok(out)
    }

    /// Revokes a key: it stops working at once (other servers on a shared store: when
    /// they next follow the store, within a second).
    pub fn revoke_key(&self, id: Uuid) -> Result<ApiKey> {
        self.change_security(|w| {
            let hash = w.get(&KEY_IDS, &id.as_u128())?.ok_or_else(|| StoreError::NotFound(format!("no key {id}")))?;
            let mut row: KeyRow = get(w, &KEYS, &hash)?.ok_or_else(|| StoreError::NotFound(format!("no key {id}")))?;
            row.revoked_on.get_or_insert(now_ms());
            w.insert(&KEYS, &hash, &codec::encode(&row)?)?;
            let name = user_row(w, row.user_id.as_u128())?.map(|u| u.name).unwrap_or_default();
            Ok(key_of_row(row, name))
        })
    }

    /// The key with this hash and the principal of its user, if the key is usable
    /// now and its user enabled; else why not.
    pub fn authenticate(&self, hash: &[u8; 32]) -> Result<std::result::Result<(ApiKey, Principal), String>> {
        let r = self.read()?;
        let Some(row) = get::<_, KeyRow>(&r, &KEYS, hash)? else {
            return Ok(Err("the key is not known".into()));
        };
        let key = key_of_row(row, String::new());
        if key.revoked_on.is_some() {
            return Ok(Err(format!("key {} was revoked", key.id)));
        }
        if !key.usable_at(now_ms()) {
            return Ok(Err(format!("key {} has expired", key.id)));
        }
        match principal_in(&r, key.user_id)? {
            Some(p) => Ok(Ok((key, p))),
            None => Ok(Err(format!("the user of key {} is disabled", key.id))),
        }
    }

    /// Makes `secret` a key of user `name` holding `role` (creating the user), labelled
    /// `label`; revokes the keys of that label it replaces. `serve` does this for the
    /// admin and worker tokens, so they are keys like any other.
    pub fn ensure_token_key(&self, name: &str, role: &str, label: &str, secret: &str) -> Result<()> {
        let hash = security::key_hash(secret);
        let r = self.read()?;
        let known = get::<_, KeyRow>(&r, &KEYS, &hash)?.is_some_and(|k| k.revoked_on.is_none());
        if known && r.get(&USER_NAMES, &name.to_owned())?.is_some() {
            return Ok(());
        }
        drop(r);
        self.change_security(|w| {
            let id = match w.get(&USER_NAMES, &name.to_owned())? {
                Some(id) => id,
                None => {
                    let id = Uuid::now_v7().as_u128();
                    let row = UserRow {
                        name: name.to_owned(),
                        roles: vec![role.to_owned()],
                        disabled: false,
                        created_on: now_ms(),
                    };
                    w.insert(&USERS, &id, &codec::encode(&row)?)?;
                    w.insert(&USER_NAMES, &name.to_owned(), &id)?;
                    id
                }
            };
            for (h, v) in w.all(&KEYS)? {
                let mut row: KeyRow = codec::decode(&v)?;
                if row.user_id.as_u128() == id && row.label == label && h != hash && row.revoked_on.is_none() {
                    row.revoked_on = Some(now_ms());
                    w.insert(&KEYS, &h, &codec::encode(&row)?)?;
                }
            }
            if get::<_, KeyRow>(w, &KEYS, &hash)?.is_none() {
                add_key(w, name, label, None, hash)?;
            }
            Ok(())
        })
    }

    /// Appends an audit entry.
    pub fn audit(&self, entry: &AuditEntry) -> Result<()> {
        let row = AuditRow {
            at: entry.at,
            user_id: entry.user_id,
            user: entry.user.clone(),
            action: entry.action.clone(),
            target: entry.target.clone(),
            outcome: entry.outcome.clone(),
            message: entry.message.clone(),
        };
        self.write(|w| w.insert(&AUDIT, &entry.id.as_u128(), &codec::encode(&row)?))
    }

    /// Up to `max` audit entries, newest first, older than `before` if given.
    pub fn audit_entries(&self, before: Option<Uuid>, max: usize) -> Result<Vec<AuditEntry>> {
        let r = self.read()?;
        let hi = before.map_or(u128::MAX, |b| b.as_u128().saturating_sub(1));
        let mut out = Vec::new();
        r.scan(&AUDIT, ..=hi, true, |id, v| {
            let row: AuditRow = codec::decode(&v)?;
            out.push(AuditEntry {
                id: Uuid::from_u128(id),
                at: row.at,
                user_id: row.user_id,
                user: row.user,
                action: row.action,
                target: row.target,
                outcome: row.outcome,
                message: row.message,
            });
            Ok(if out.len() >= max.min(MAX_AUDIT_PAGE) {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            })
        })?;
        Ok(out)
    }
}

fn add_key(w: &Write<'_>, user: &str, label: &str, expires_on: Option<i64>, hash: [u8; 32]) -> Result<ApiKey> {
    let user_id = user_id_by_name(w, user)?;
    if w.get(&KEYS, &hash)?.is_some() {
        return Err(StoreError::Conflict("that key exists".into()));
    }
    if label.len() > 200 {
        return Err(StoreError::Invalid("a key's label may have at most 200 bytes".into()));
    }
    let row = KeyRow {
        id: Uuid::now_v7(),
        user_id: Uuid::from_u128(user_id),
        label: label.to_owned(),
        created_on: now_ms(),
        expires_on,
        revoked_on: None,
    };
    w.insert(&KEYS, &hash, &codec::encode(&row)?)?;
    w.insert(&KEY_IDS, &row.id.as_u128(), &hash)?;
    Ok(key_of_row(row, user.to_owned()))
}

fn dedup(roles: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in roles {
        if !out.contains(r) {
            out.push(r.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::{BASIC_USER, Depth, SYSTEM_ADMINISTRATOR, key_hash};

    #[test]
    fn users_keys_and_roles_on_every_engine() {
        for (_dir, store) in crate::store::testing::stores() {
            let g0 = store.security_generation().unwrap();
            let ann = store.create_user("ann", &[BASIC_USER.into()]).unwrap();
            assert!(store.security_generation().unwrap() > g0);
            assert!(matches!(store.create_user("ann", &[]), Err(StoreError::Conflict(_))));
            assert!(matches!(store.create_user("bob", &["nope".into()]), Err(StoreError::NotFound(_))));
            assert!(store.users().unwrap().iter().all(|u| u.name != "bob"), "nothing half-made");

            let key = store.create_key("ann", "laptop", None, key_hash("secret-1")).unwrap();
            let (k, p) = store.authenticate(&key_hash("secret-1")).unwrap().unwrap();
            assert_eq!((k.id, p.user_id), (key.id, ann.id));
            assert_eq!(p.privileges.depth("account", security::Action::Read), Some(Depth::User));
            assert!(store.authenticate(&key_hash("secret-2")).unwrap().is_err());

            store.create_role("auditors", "read the log").unwrap();
            store
                .grant(
                    "auditors",
                    &[EntityPrivilege {
                        entity: "account".into(),
                        action: security::Action::Read,
                        depth: Depth::Organization,
                    }],
                    &[Capability::Audit],
                )
                .unwrap();
            assert!(store.grant(SYSTEM_ADMINISTRATOR, &[], &[Capability::Worker]).is_err());
            store.change_user_roles("ann", &["auditors".into()], &[]).unwrap();
            let (_, p) = store.authenticate(&key_hash("secret-1")).unwrap().unwrap();
            assert!(p.privileges.has(Capability::Audit));
            assert_eq!(p.privileges.depth("account", security::Action::Read), Some(Depth::Organization));

            store.set_user_disabled("ann", true).unwrap();
            assert!(store.authenticate(&key_hash("secret-1")).unwrap().unwrap_err().contains("disabled"));
            store.set_user_disabled("ann", false).unwrap();
            store.revoke_key(key.id).unwrap();
            assert!(store.authenticate(&key_hash("secret-1")).unwrap().unwrap_err().contains("revoked"));
            assert!(store.keys(Some("ann")).unwrap()[0].revoked_on.is_some());

            // A token key: made once, replaced (and the old one revoked) when it changes.
            store.ensure_token_key("admin", SYSTEM_ADMINISTRATOR, "admin token", "t1").unwrap();
            store.ensure_token_key("admin", SYSTEM_ADMINISTRATOR, "admin token", "t1").unwrap();
            assert_eq!(store.keys(Some("admin")).unwrap().len(), 1);
            store.ensure_token_key("admin", SYSTEM_ADMINISTRATOR, "admin token", "t2").unwrap();
            assert!(store.authenticate(&key_hash("t1")).unwrap().is_err());
            assert!(store.authenticate(&key_hash("t2")).unwrap().unwrap().1.privileges.has(Capability::Security));

            for i in 0..3 {
                store
                    .audit(&AuditEntry {
                        id: Uuid::now_v7(),
                        at: i,
                        user_id: ann.id,
                        user: "ann".into(),
                        action: "keys.revoke".into(),
                        target: format!("{i}"),
                        outcome: "ok".into(),
                        message: None,
                    })
                    .unwrap();
            }
            let page = store.audit_entries(None, 2).unwrap();
            assert_eq!(page.iter().map(|e| e.at).collect::<Vec<_>>(), [2, 1]);
            let rest = store.audit_entries(Some(page[1].id), 10).unwrap();
            assert_eq!(rest.iter().map(|e| e.at).collect::<Vec<_>>(), [0]);
        }
    }
}
