//! `/v1/tenants/{id}/keys/…`: a tenant's API keys, listed, revoked and rotated by the admin
//! or by the tenant itself (another tenant's id is 404, like a missing one). A key is shown
//! once, when it is made; the server keeps only its hash.

use super::auth::{self, Caller};
use super::error::{ApiError, ErrorBody};
use super::handlers::{KeyInfo, caller, json};
use super::{AppState, Reply};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use warp::Reply as _;
use warp::http::StatusCode;

/// The admin, or the tenant `id` itself; 404 for anyone else and for the admin tenant.
pub(crate) async fn admin_or_own(
    state: &AppState,
    authz: Option<String>,
    id: i64,
) -> Result<Caller, ApiError> {
    let c = caller(state, authz).await?;
    let allowed = match &c {
        Caller::Admin => true,
        Caller::Tenant { id: own, .. } => *own == id,
    };
    if !allowed || id == weir_store::ADMIN_TENANT {
        return Err(ApiError::not_found(format!("tenant {id}")));
    }
    Ok(c)
}

/// A stored key (never the key itself).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeySummary {
    /// The key's id.
    pub id: i64,
    /// Its label.
    pub label: String,
    /// Creation time, UTC ms.
    pub created_at: i64,
    /// When it last authenticated a request (UTC ms, to the minute), if ever.
    pub last_used_at: Option<i64>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A tenant's keys, revoked ones included.
#[utoipa::path(get, path = "/v1/tenants/{id}/keys", tag = "tenants", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Tenant id", example = 1)),
    responses((status = 200, description = "The tenant's keys", body = [KeySummary]),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such tenant", body = ErrorBody)))]
pub async fn list(id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    admin_or_own(&state, authz, id).await?;
    if state
        .store
        .tenant(id)
        .await
        .map_err(ApiError::from)?
        .is_none()
    {
        return Err(ApiError::not_found(format!("tenant {id}")).into());
    }
    let keys: Vec<KeySummary> = state
        .store
        .tenant_keys(id)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|k| KeySummary {
            id: k.id,
            label: k.label,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            revoked: k.revoked,
        })
        .collect();
    Ok(json(StatusCode::OK, &keys))
}

/// Revokes a key: it stops working at once.
#[utoipa::path(delete, path = "/v1/tenants/{id}/keys/{key_id}", tag = "tenants", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Tenant id", example = 1),
           ("key_id" = i64, Path, description = "Key id", example = 1)),
    responses((status = 204, description = "Revoked"),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such tenant or key", body = ErrorBody)))]
pub async fn revoke(id: i64, key_id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    admin_or_own(&state, authz, id).await?;
    if !state
        .store
        .revoke_key(id, key_id)
        .await
        .map_err(ApiError::from)?
    {
        return Err(ApiError::not_found(format!("key {key_id} of tenant {id}")).into());
    }
    Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
}

/// Rotates a key: a new key with the same label (shown once), and the old one revoked.
#[utoipa::path(post, path = "/v1/tenants/{id}/keys/{key_id}/rotate", tag = "tenants", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Tenant id", example = 1),
           ("key_id" = i64, Path, description = "Key id", example = 1)),
    responses((status = 201, description = "The new key, shown once", body = KeyInfo),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such tenant or live key", body = ErrorBody)))]
pub async fn rotate(id: i64, key_id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    admin_or_own(&state, authz, id).await?;
    let keys = state.store.tenant_keys(id).await.map_err(ApiError::from)?;
    let Some(old) = keys.iter().find(|k| k.id == key_id && !k.revoked) else {
        return Err(ApiError::not_found(format!("live key {key_id} of tenant {id}")).into());
    };
    let key = auth::new_key();
    state
        .store
        .insert_api_key(id, &auth::hash_key(&key), &old.label)
        .await
        .map_err(ApiError::from)?;
    state
        .store
        .revoke_key(id, key_id)
        .await
        .map_err(ApiError::from)?;
    Ok(json(
        StatusCode::CREATED,
        &KeyInfo {
            tenant_id: id,
            api_key: key,
        },
    ))
}
