//! Principals and the external identities (provider, tenant, subject) that map to them.

use chiron_core::time_util::{now, to_millis};
use chiron_core::{ExternalIdentity, NewAuditEvent, Principal, PrincipalId, PrincipalStatus};

use crate::audit::insert_audit;
use crate::{conflict_or, rows, Store, StoreError};

impl Store {
    /// Creates an active principal.
    pub async fn create_principal(&self, display_name: &str) -> Result<Principal, StoreError> {
        let principal = Principal {
            id: PrincipalId::new(),
            display_name: display_name.to_owned(),
            status: PrincipalStatus::Active,
            created_at: now(),
        };
        sqlx::query(
            "INSERT INTO principals (id, display_name, status, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(principal.id.to_string())
        .bind(principal.display_name.clone())
        .bind(principal.status.as_str())
        .bind(to_millis(principal.created_at))
        .execute(self.pool())
        .await?;
        Ok(principal)
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
        let identity = ExternalIdentity {
            provider: provider.to_owned(),
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            principal_id,
            created_at: now(),
        };
        sqlx::query(
            "INSERT INTO external_identities (provider, tenant, subject, principal_id, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(identity.provider.clone())
        .bind(identity.tenant.clone())
        .bind(identity.subject.clone())
        .bind(principal_id.to_string())
        .bind(to_millis(identity.created_at))
        .execute(self.pool())
        .await
        .map_err(|err| conflict_or(err, "external identity"))?;
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
