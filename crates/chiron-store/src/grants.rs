//! Grants: which principals may see and call which tool packages. A package is granted to a
//! principal, to a group (all its members), or to everyone.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use chiron_core::time_util::{now, to_millis};
use chiron_core::{Actor, GroupId, NewAuditEvent, PrincipalId};

use crate::audit::insert_audit;
use crate::{rows, Store, StoreError};

/// Who a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum GrantSubject {
    /// One principal.
    Principal(PrincipalId),
    /// Every member of a group.
    Group(GroupId),
    /// Every principal.
    Everyone,
}

impl GrantSubject {
    fn columns(self) -> (&'static str, String) {
        match self {
            Self::Principal(id) => ("principal", id.to_string()),
            Self::Group(id) => ("group", id.to_string()),
            Self::Everyone => ("everyone", String::new()),
        }
    }

    fn from_columns(kind: &str, id: &str) -> Result<Self, String> {
        let bad = |e: uuid::Error| e.to_string();
        match kind {
            "principal" => Ok(Self::Principal(PrincipalId::from_str(id).map_err(bad)?)),
            "group" => Ok(Self::Group(GroupId::from_str(id).map_err(bad)?)),
            "everyone" => Ok(Self::Everyone),
            other => Err(format!("unknown subject kind {other:?}")),
        }
    }
}

impl fmt::Display for GrantSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Principal(id) => write!(f, "principal {id}"),
            Self::Group(id) => write!(f, "group {id}"),
            Self::Everyone => f.write_str("everyone"),
        }
    }
}

/// A stored grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// The package name.
    pub package: String,
    /// Who it is for.
    pub subject: GrantSubject,
    /// When it was made.
    #[serde(with = "chiron_core::time_util::serde_rfc3339")]
    pub created_at: OffsetDateTime,
}

fn grant_row(row: &sqlx::any::AnyRow) -> Result<Grant, StoreError> {
    use sqlx::Row;
    let kind: String = row.try_get("subject_kind")?;
    let id: String = row.try_get("subject_id")?;
    Ok(Grant {
        package: row.try_get("package")?,
        subject: GrantSubject::from_columns(&kind, &id).map_err(|reason| StoreError::Corrupt {
            table: "grants",
            reason,
        })?,
        created_at: rows::millis(row, "created_at")?,
    })
}

/// The audit event of a grant change: `grant.add` or `grant.remove` on the package.
fn grant_event(actor: Actor, action: &str, package: &str, subject: GrantSubject) -> NewAuditEvent {
    NewAuditEvent {
        actor,
        action: action.into(),
        target_kind: "package".into(),
        target_id: package.into(),
        detail: serde_json::json!({ "subject": subject }),
    }
}

impl Store {
    /// Grants `package` to `subject`; returns whether the grant is new (granting twice is a
    /// no-op). A `grant.add` audit event by `actor` is written only for a new grant, in the
    /// same transaction.
    pub async fn add_grant(
        &self,
        package: &str,
        subject: GrantSubject,
        actor: Actor,
    ) -> Result<bool, StoreError> {
        let (kind, id) = subject.columns();
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "INSERT INTO grants (id, package, subject_kind, subject_id, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (package, subject_kind, subject_id) DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(package.to_owned())
        .bind(kind)
        .bind(id)
        .bind(to_millis(now()))
        .execute(&mut *tx)
        .await?;
        let added = done.rows_affected() > 0;
        if added {
            insert_audit(&mut tx, grant_event(actor, "grant.add", package, subject)).await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Removes a grant; returns whether it existed. Audited (`grant.remove` by `actor`) when it
    /// did.
    pub async fn remove_grant(
        &self,
        package: &str,
        subject: GrantSubject,
        actor: Actor,
    ) -> Result<bool, StoreError> {
        let (kind, id) = subject.columns();
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "DELETE FROM grants WHERE package = $1 AND subject_kind = $2 AND subject_id = $3",
        )
        .bind(package.to_owned())
        .bind(kind)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let removed = done.rows_affected() > 0;
        if removed {
            insert_audit(
                &mut tx,
                grant_event(actor, "grant.remove", package, subject),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(removed)
    }

    /// Every grant, or those of one package, by package then creation.
    pub async fn list_grants(&self, package: Option<&str>) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM grants WHERE ($1 IS NULL OR package = $1) ORDER BY package, id",
        )
        .bind(package.map(str::to_owned))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(grant_row).collect()
    }

    /// A fingerprint of everything that decides who may use which package (grants and group
    /// memberships): it changes whenever any of it changes, whichever process changed it, so
    /// a server can notice changes made by the CLI or another replica.
    pub async fn access_revision(&self) -> Result<String, StoreError> {
        use sqlx::Row;
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM grants) AS grants,
                    (SELECT COALESCE(MAX(id), '') FROM grants) AS newest_grant,
                    (SELECT COUNT(*) FROM group_members) AS members,
                    (SELECT COALESCE(MAX(added_at), 0) FROM group_members) AS newest_member",
        )
        .fetch_one(self.pool())
        .await?;
        let grants: i64 = row.try_get("grants")?;
        let newest_grant: String = row.try_get("newest_grant")?;
        let members: i64 = row.try_get("members")?;
        let newest_member: i64 = row.try_get("newest_member")?;
        Ok(format!("{grants}:{newest_grant}:{members}:{newest_member}"))
    }

    /// The packages a principal may use: granted to it, to one of its groups, or to everyone.
    pub async fn granted_packages(
        &self,
        principal_id: PrincipalId,
    ) -> Result<Vec<String>, StoreError> {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT DISTINCT g.package FROM grants g
             WHERE g.subject_kind = 'everyone'
                OR (g.subject_kind = 'principal' AND g.subject_id = $1)
                OR (g.subject_kind = 'group' AND g.subject_id IN
                    (SELECT m.group_id FROM group_members m WHERE m.principal_id = $1))
             ORDER BY g.package",
        )
        .bind(principal_id.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|row| Ok(row.try_get("package")?)).collect()
    }
}
