//! Principals and the external identities (provider, tenant, subject) that map to them.

use chiron_core::time_util::{now, to_millis};
use chiron_core::{ExternalIdentity, NewAuditEvent, Principal, PrincipalId, PrincipalStatus};

use crate::audit::insert_audit;
use crate::{conflict_or, rows, Store, StoreError};

impl Store {
    /// Creates an active principal.
    pub async fn create_principal(&self, display_name: &str) -> Result<Principal, StoreError> {
        let principal = new_principal(display_name);
        insert_principal(&mut *self.pool().acquire().await?, &principal).await?;
        Ok(principal)
    }

    /// The principal linked to an external identity; when there is none yet, a new principal
    /// named `display_name` is created and linked in one transaction. Returns whether it was
    /// created now. Callers racing for the same new identity end with one principal: the
    /// loser's link conflicts, its transaction (with its principal) rolls back, and it gets
    /// the winner's.
    pub async fn principal_for_identity(
        &self,
        provider: &str,
        tenant: &str,
        subject: &str,
        display_name: &str,
    ) -> Result<(Principal, bool), StoreError> {
        if let Some(found) = self.linked_principal(provider, tenant, subject).await? {
            return Ok((found, false));
        }
        let principal = new_principal(display_name);
        let identity = new_identity(provider, tenant, subject, principal.id);
        let mut tx = self.pool().begin().await?;
        insert_principal(&mut tx, &principal).await?;
        match insert_identity(&mut tx, &identity).await {
            Ok(()) => {
                tx.commit().await?;
                Ok((principal, true))
            }
            Err(StoreError::Conflict(what)) => {
                tx.rollback().await?;
                let found = self.linked_principal(provider, tenant, subject).await?;
                found.map(|p| (p, false)).ok_or(StoreError::Conflict(what))
            }
            Err(err) => Err(err),
        }
    }

    /// The principal an external identity is linked to, if any (and if it still exists).
    async fn linked_principal(
        &self,
        provider: &str,
        tenant: &str,
        subject: &str,
    ) -> Result<Option<Principal>, StoreError> {
        match self.find_identity(provider, tenant, subject).await? {
            Some(identity) => self.get_principal(identity.principal_id).await,
            None => Ok(None),
        }
    }

    /// The principal with this id, if any.
    pub async fn get_principal(&self, id: PrincipalId) -> Result<Option<Principal>, StoreError> {
        let row = sqlx::query("SELECT * FROM principals WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(rows::principal).transpose()
    }

    /// Principals whose display name is exactly `name`, oldest first.
    pub async fn principals_named(&self, name: &str) -> Result<Vec<Principal>, StoreError> {
        let rows = sqlx::query("SELECT * FROM principals WHERE display_name = $1 ORDER BY id")
            .bind(name.to_owned())
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(rows::principal).collect()
    }

    /// Every principal, oldest first.
    pub async fn list_principals(&self) -> Result<Vec<Principal>, StoreError> {
        let rows = sqlx::query("SELECT * FROM principals ORDER BY id")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(rows::principal).collect()
    }

    /// Sets a principal's status and records `audit` in the same transaction.
    pub async fn set_principal_status(
        &self,
        id: PrincipalId,
        status: PrincipalStatus,
        audit: NewAuditEvent,
    ) -> Result<Principal, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query("UPDATE principals SET status = $1 WHERE id = $2 RETURNING *")
            .bind(status.as_str())
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound("principal"));
        };
        let principal = rows::principal(&row)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(principal)
    }

    /// Links an external identity to a principal. Fails with `Conflict` if the identity is
    /// already linked.
    pub async fn link_identity(
        &self,
        provider: &str,
        tenant: &str,
        subject: &str,
        principal_id: PrincipalId,
    ) -> Result<ExternalIdentity, StoreError> {
        let identity = new_identity(provider, tenant, subject, principal_id);
        insert_identity(&mut *self.pool().acquire().await?, &identity).await?;
        Ok(identity)
    }

    /// The principal an external identity maps to, if linked.
    pub async fn find_identity(
        &self,
        provider: &str,
        tenant: &str,
        subject: &str,
    ) -> Result<Option<ExternalIdentity>, StoreError> {
        let row = sqlx::query(
            "SELECT * FROM external_identities WHERE provider = $1 AND tenant = $2 AND subject = $3",
        )
        .bind(provider.to_owned())
        .bind(tenant.to_owned())
        .bind(subject.to_owned())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(rows::identity).transpose()
    }

    /// Every external identity linked to a principal.
    pub async fn identities_of(
        &self,
        principal_id: PrincipalId,
    ) -> Result<Vec<ExternalIdentity>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM external_identities WHERE principal_id = $1
             ORDER BY provider, tenant, subject",
        )
        .bind(principal_id.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(rows::identity).collect()
    }
}

fn new_principal(display_name: &str) -> Principal {
    Principal {
        id: PrincipalId::new(),
        display_name: display_name.to_owned(),
        status: PrincipalStatus::Active,
        created_at: now(),
    }
}

fn new_identity(
    provider: &str,
    tenant: &str,
    subject: &str,
    principal_id: PrincipalId,
) -> ExternalIdentity {
    ExternalIdentity {
        provider: provider.to_owned(),
        tenant: tenant.to_owned(),
        subject: subject.to_owned(),
        principal_id,
        created_at: now(),
    }
}

async fn insert_principal(
    conn: &mut sqlx::AnyConnection,
    principal: &Principal,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO principals (id, display_name, status, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(principal.id.to_string())
    .bind(principal.display_name.clone())
    .bind(principal.status.as_str())
    .bind(to_millis(principal.created_at))
    .execute(conn)
    .await?;
    Ok(())
}

/// Links an identity; [`StoreError::Conflict`] when it is linked already.
async fn insert_identity(
    conn: &mut sqlx::AnyConnection,
    identity: &ExternalIdentity,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO external_identities (provider, tenant, subject, principal_id, created_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(identity.provider.clone())
    .bind(identity.tenant.clone())
    .bind(identity.subject.clone())
    .bind(identity.principal_id.to_string())
    .bind(to_millis(identity.created_at))
    .execute(conn)
    .await
    .map_err(|err| conflict_or(err, "external identity"))?;
    Ok(())
}
