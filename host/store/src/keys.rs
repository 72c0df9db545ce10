//! API keys: list, revoke and touch (last use). Keys are stored as their SHA-256 only.

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use crate::entity::api_keys;
use crate::{ADMIN_TENANT, Store, StoreError};

/// A stored key, without its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key's id.
    pub id: i64,
    /// Its tenant.
    pub tenant_id: i64,
    /// Free-form label.
    pub label: String,
    /// Creation time, UTC ms.
    pub created_at: i64,
    /// When it last authenticated a request (UTC ms, to the minute), if ever.
    pub last_used_at: Option<i64>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A key that authenticates: its id, its tenant and its stored hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMatch {
    /// The key's id.
    pub id: i64,
    /// Its tenant ([`ADMIN_TENANT`] for the admin).
    pub tenant_id: i64,
    /// The stored hash (the caller compares it with its own in constant time).
    pub key_hash: String,
}

impl Store {
    /// The key with this hash, unless revoked.
    pub async fn key_match(&self, key_hash: &str) -> Result<Option<KeyMatch>, StoreError> {
        let row = api_keys::Entity::find()
            .filter(api_keys::Column::KeyHash.eq(key_hash))
            .filter(api_keys::Column::Revoked.eq(false))
            .one(&self.db)
            .await?;
        Ok(row.map(|m| KeyMatch {
            id: m.id,
            tenant_id: m.tenant_id,
            key_hash: m.key_hash,
        }))
    }

    /// A tenant's keys, revoked ones included, oldest first.
    pub async fn tenant_keys(&self, tenant_id: i64) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = api_keys::Entity::find()
            .filter(api_keys::Column::TenantId.eq(tenant_id))
            .order_by_asc(api_keys::Column::Id)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|m| KeyRecord {
                id: m.id,
                tenant_id: m.tenant_id,
                label: m.label,
                created_at: m.created_at,
                last_used_at: m.last_used_at,
                revoked: m.revoked,
            })
            .collect())
    }

    /// Revokes one of a tenant's keys; false if the tenant has no such key.
    pub async fn revoke_key(&self, tenant_id: i64, key_id: i64) -> Result<bool, StoreError> {
        let r = api_keys::Entity::update_many()
            .col_expr(api_keys::Column::Revoked, Expr::value(true))
            .filter(api_keys::Column::TenantId.eq(tenant_id))
            .filter(api_keys::Column::Id.eq(key_id))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected == 1)
    }

    /// Revokes every admin key but the one with this hash (an admin key rotation).
    /// Returns how many were revoked.
    pub async fn revoke_admin_keys_except(&self, key_hash: &str) -> Result<u64, StoreError> {
        let r = api_keys::Entity::update_many()
            .col_expr(api_keys::Column::Revoked, Expr::value(true))
            .filter(api_keys::Column::TenantId.eq(ADMIN_TENANT))
            .filter(api_keys::Column::Revoked.eq(false))
            .filter(api_keys::Column::KeyHash.ne(key_hash))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected)
    }

    /// Records that a key authenticated a request at `at_ms`.
    pub async fn touch_key(&self, key_id: i64, at_ms: i64) -> Result<(), StoreError> {
        api_keys::Entity::update_many()
            .col_expr(api_keys::Column::LastUsedAt, Expr::value(at_ms))
            .filter(api_keys::Column::Id.eq(key_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
