//! Groups of principals and their membership, used by grants.

use chiron_core::time_util::{now, to_millis};
use chiron_core::{Group, GroupId, Principal, PrincipalId};

use crate::{conflict_or, rows, Store, StoreError};

impl Store {
    /// Creates a group; `Conflict` if the name is taken.
    pub async fn create_group(&self, name: &str) -> Result<Group, StoreError> {
        let group = Group {
            id: GroupId::new(),
            name: name.to_owned(),
            created_at: now(),
        };
        sqlx::query("INSERT INTO principal_groups (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(group.id.to_string())
            .bind(group.name.clone())
            .bind(to_millis(group.created_at))
            .execute(self.pool())
            .await
            .map_err(|err| conflict_or(err, "group"))?;
        Ok(group)
    }

    /// The group with this name, if any.
    pub async fn group_by_name(&self, name: &str) -> Result<Option<Group>, StoreError> {
        let row = sqlx::query("SELECT * FROM principal_groups WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(rows::group).transpose()
    }

    /// Every group, by name.
    pub async fn list_groups(&self) -> Result<Vec<Group>, StoreError> {
        let rows = sqlx::query("SELECT * FROM principal_groups ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(rows::group).collect()
    }

    /// Deletes a group and its memberships; `NotFound` if there is no such group.
    pub async fn delete_group(&self, id: GroupId) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM group_members WHERE group_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM principal_groups WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("group"));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Adds a principal to a group. Adding an existing member is a no-op; a missing group or
    /// principal is `NotFound`.
    pub async fn add_group_member(
        &self,
        group_id: GroupId,
        principal_id: PrincipalId,
    ) -> Result<(), StoreError> {
        if self.get_principal(principal_id).await?.is_none() {
            return Err(StoreError::NotFound("principal"));
        }
        let exists = sqlx::query("SELECT id FROM principal_groups WHERE id = $1")
            .bind(group_id.to_string())
            .fetch_optional(self.pool())
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound("group"));
        }
        sqlx::query(
            "INSERT INTO group_members (group_id, principal_id, added_at) VALUES ($1, $2, $3)
             ON CONFLICT (group_id, principal_id) DO NOTHING",
        )
        .bind(group_id.to_string())
        .bind(principal_id.to_string())
        .bind(to_millis(now()))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Removes a principal from a group; returns whether it was a member.
    pub async fn remove_group_member(
        &self,
        group_id: GroupId,
        principal_id: PrincipalId,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND principal_id = $2")
                .bind(group_id.to_string())
                .bind(principal_id.to_string())
                .execute(self.pool())
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The members of a group, oldest principal first.
    pub async fn group_members(&self, group_id: GroupId) -> Result<Vec<Principal>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.* FROM principals p JOIN group_members m ON m.principal_id = p.id
             WHERE m.group_id = $1 ORDER BY p.id",
        )
        .bind(group_id.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(rows::principal).collect()
    }

    /// The groups a principal belongs to, by name.
    pub async fn groups_of(&self, principal_id: PrincipalId) -> Result<Vec<Group>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.* FROM principal_groups g JOIN group_members m ON m.group_id = g.id
             WHERE m.principal_id = $1 ORDER BY g.name",
        )
        .bind(principal_id.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(rows::group).collect()
    }
}
