//! API keys, the caller of a request, per-tenant rate limits, and signed result cursors.
//!
//! A key is `wk_` followed by 64 hex digits: 256 bits from the operating system's CSPRNG.
//! Only its SHA-256 is stored. A request's key is hashed, looked up by hash, and the stored
//! hash is compared with the computed one in constant time.

use super::error::ApiError;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;
use subtle::ConstantTimeEq;
use weir_store::{ADMIN_TENANT, Store};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The holder of the admin key: manages tenants and keys, owns no objects.
    Admin,
    /// A tenant.
    Tenant {
        /// Its id.
        id: i64,
        /// Its name (the prefix of its Kafka topics).
        name: String,
    },
}

impl Caller {
    /// The tenant, or 403 for the admin key (which owns nothing).
    pub fn tenant(&self) -> Result<(i64, &str), ApiError> {
        match self {
            Caller::Tenant { id, name } => Ok((*id, name)),
            Caller::Admin => Err(ApiError::new(
                warp::http::StatusCode::FORBIDDEN,
                "tenant_only",
                "the admin key owns no plugins or pipelines: use a tenant's key",
            )),
        }
    }
}

/// A fresh API key.
pub fn new_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("wk_{}", hex::encode(bytes))
}

/// The stored form of a key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Resolves an `Authorization` header to its caller and the key's id; 401 for anything
/// else.
pub async fn authenticate(store: &Store, header: Option<&str>) -> Result<(Caller, i64), ApiError> {
    let key = header
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| k.len() == 67 && k.starts_with("wk_"))
        .ok_or_else(ApiError::unauthorized)?;
    let computed = hash_key(key);
    let found = store
        .key_match(&computed)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    if !bool::from(found.key_hash.as_bytes().ct_eq(computed.as_bytes())) {
        return Err(ApiError::unauthorized());
    }
    if found.tenant_id == ADMIN_TENANT {
        return Ok((Caller::Admin, found.id));
    }
    let t = store
        .tenant(found.tenant_id)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    Ok((
        Caller::Tenant {
            id: t.id,
            name: t.name,
        },
        found.id,
    ))
}

/// A bucket's tokens and when they were last counted, per (tenant, action).
type Buckets = HashMap<(i64, &'static str), (f64, Instant)>;

/// Token buckets per (tenant, action): `burst` tokens, refilled at `per_minute`.
pub struct RateLimiter {
    per_minute: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

impl RateLimiter {
    /// A limiter; `per_minute = 0` turns it off.
    pub fn new(per_minute: f64, burst: f64) -> Self {
        RateLimiter {
            per_minute,
            burst: burst.max(1.0),
            buckets: Mutex::default(),
        }
    }

    /// Takes a token, or says how many seconds until one is free (429).
    pub fn check(&self, tenant: i64, action: &'static str) -> Result<(), ApiError> {
        if self.per_minute <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = map.entry((tenant, action)).or_insert((self.burst, now));
        let rate = self.per_minute / 60.0;
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - *tokens) / rate).ceil() as u64;
            Err(ApiError::rate_limited(action, wait))
        }
    }
}

/// Signs and checks result cursors with HMAC-SHA256, so a cursor is opaque and bound to
/// the tenant and pipeline it was issued for.
pub struct CursorSigner {
    key: [u8; 32],
}

/// What a cursor carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CursorBody {
    /// The tenant it was issued to.
    pub t: i64,
    /// The pipeline.
    pub p: i64,
    /// `predictions`, `windows` or `stream`.
    pub k: String,
    /// Predictions: the last (partition, offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub po: Option<(i32, i64)>,
    /// Windows: the last (key, window start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kw: Option<(String, i64)>,
    /// A live stream: the last offset sent of each partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos: Option<Vec<(i32, i64)>>,
}

impl CursorSigner {
    /// A signer with a key derived from `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"weir result cursors v1\0");
        h.update(secret);
        CursorSigner {
            key: h.finalize().into(),
        }
    }

    fn mac(&self, msg: &[u8]) -> [u8; 32] {
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, k) in self.key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let inner = Sha256::new()
            .chain_update(ipad)
            .chain_update(msg)
            .finalize();
        Sha256::new()
            .chain_update(opad)
            .chain_update(inner)
            .finalize()
            .into()
    }

    /// The opaque cursor for `body`.
    pub fn sign(&self, body: &CursorBody) -> String {
        let json = serde_json::to_vec(body).unwrap_or_default();
        let mut out = json.clone();
        out.extend_from_slice(&self.mac(&json));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
    }

    /// The body of a cursor issued to `tenant` for `pipeline` and `kind`; anything else
    /// (forged, altered, another tenant's or another pipeline's) is 400.
    pub fn open(
        &self,
        cursor: &str,
        tenant: i64,
        pipeline: i64,
        kind: &str,
    ) -> Result<CursorBody, ApiError> {
        let bad = || ApiError::bad_request("invalid cursor");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| bad())?;
        if raw.len() < 33 {
            return Err(bad());
        }
        let (json, mac) = raw.split_at(raw.len() - 32);
        if !bool::from(self.mac(json).ct_eq(mac)) {
            return Err(bad());
        }
        let body: CursorBody = serde_json::from_slice(json).map_err(|_| bad())?;
        if body.t != tenant || body.p != pipeline || body.k != kind {
            return Err(bad());
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_256_bits_and_hash_stably() {
        let a = new_key();
        let b = new_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), 67);
        assert_eq!(hash_key(&a), hash_key(&a));
        assert_ne!(hash_key(&a), hash_key(&b));
    }

    #[test]
    fn cursors_are_bound_and_tamper_proof() {
        let s = CursorSigner::new(b"secret");
        let body = CursorBody {
            t: 1,
            p: 2,
            k: "predictions".into(),
            po: Some((3, 40)),
            kw: None,
            pos: None,
        };
        let c = s.sign(&body);
        assert_eq!(s.open(&c, 1, 2, "predictions").ok(), Some(body));
        assert!(s.open(&c, 9, 2, "predictions").is_err());
        assert!(s.open(&c, 1, 9, "predictions").is_err());
        assert!(s.open(&c, 1, 2, "windows").is_err());
        assert!(
            CursorSigner::new(b"other")
                .open(&c, 1, 2, "predictions")
                .is_err()
        );
        let mut forged = c.into_bytes();
        forged[3] ^= 1;
        assert!(
            s.open(&String::from_utf8_lossy(&forged), 1, 2, "predictions")
                .is_err()
        );
    }

    #[test]
    fn rate_limiter_refuses_past_the_burst() {
        let l = RateLimiter::new(60.0, 2.0);
        assert!(l.check(1, "uploads").is_ok());
        assert!(l.check(1, "uploads").is_ok());
        let e = l.check(1, "uploads").err();
        assert_eq!(e.and_then(|e| e.retry_after), Some(1));
        assert!(l.check(2, "uploads").is_ok(), "buckets are per tenant");
        assert!(l.check(1, "swaps").is_ok(), "and per action");
    }
}
