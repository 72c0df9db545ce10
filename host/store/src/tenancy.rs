//! Tenant-scoped reads and writes for the HTTP API: plugins, pipelines, keys, and paged
//! result queries. Every function that takes a `tenant_id` filters by it, so a caller that
//! passes the authenticated tenant can never reach another tenant's rows: a foreign id looks
//! exactly like a missing one.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, DbErr, EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, SqlErr,
};

use crate::entity::{
    api_keys, deployments, pipelines, plugins, predictions, tenants, window_results,
};
use crate::{Prediction, Store, StoreError, WindowResult, now_ms};

/// Tenant id that owns the admin key.
pub const ADMIN_TENANT: i64 = 0;

/// A stored plugin's metadata (without its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRecord {
    /// The plugin's id.
    pub id: i64,
    /// The owning tenant.
    pub tenant_id: i64,
    /// Name, unique with `version` per tenant.
    pub name: String,
    /// Version.
    pub version: String,
    /// Hex SHA-256 of the component, computed by the server.
    pub sha256: String,
    /// `extractor`, `model` or `operator`.
    pub world: String,
    /// Component size, bytes.
    pub size: i64,
    /// Validation details, JSON text.
    pub manifest: String,
    /// Upload time, UTC ms.
    pub created_at: i64,
}

/// A plugin to store.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    /// The owning tenant.
    pub tenant_id: i64,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Hex SHA-256 of `bytes`.
    pub sha256: String,
    /// The world it implements.
    pub world: String,
    /// Validation details, JSON text.
    pub manifest: String,
    /// The component.
    pub bytes: Vec<u8>,
}

/// A stored pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineRecord {
    /// The pipeline's id.
    pub id: i64,
    /// The owning tenant.
    pub tenant_id: i64,
    /// Name, unique per tenant.
    pub name: String,
    /// The spec (TOML).
    pub spec: String,
    /// `created`, `running`, `stopped` or `failed`.
    pub status: String,
    /// Creation time, UTC ms.
    pub created_at: i64,
    /// Why it failed, when its status is `failed`.
    pub error: Option<String>,
}

/// What a tenant stores (for its quotas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TenantUsage {
    /// Pipelines, running or not.
    pub pipelines: u64,
    /// Plugin versions.
    pub plugins: u64,
    /// Bytes of plugin components.
    pub plugin_bytes: u64,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    /// The tenant's id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Creation time, UTC ms.
    pub created_at: i64,
    /// The admin's overrides of the server's ceilings (a JSON document), if any.
    pub limits: Option<String>,
}

impl From<tenants::Model> for TenantRecord {
    fn from(m: tenants::Model) -> Self {
        TenantRecord {
            id: m.id,
            name: m.name,
            created_at: m.created_at,
            limits: m.limits,
        }
    }
}

/// Filters of a paged result query.
#[derive(Debug, Clone, Default)]
pub struct ResultFilter {
    /// Only this key.
    pub key: Option<String>,
    /// Event time (window start for windows) at or after, ms.
    pub from_ts: Option<i64>,
    /// Event time (window start for windows) before, ms.
    pub to_ts: Option<i64>,
    /// At most this many rows.
    pub limit: u64,
}

/// Maps a unique-key violation to [`StoreError::Conflict`].
fn conflict(e: DbErr, what: &str) -> StoreError {
    match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => StoreError::Conflict(what.to_owned()),
        _ => StoreError::Db(e),
    }
}

fn plugin_record(m: PluginMeta) -> PluginRecord {
    PluginRecord {
        id: m.id,
        tenant_id: m.tenant_id,
        name: m.name,
        version: m.version,
        sha256: m.sha256,
        world: m.world,
        size: m.size,
        manifest: m.manifest,
        created_at: m.created_at,
    }
}

fn pipeline_record(m: pipelines::Model) -> PipelineRecord {
    PipelineRecord {
        id: m.id,
        tenant_id: m.tenant_id,
        name: m.name,
        spec: m.spec,
        status: m.status,
        created_at: m.created_at,
        error: m.error,
    }
}

/// The plugin columns without the blob, for listings.
#[derive(Debug, FromQueryResult)]
struct PluginMeta {
    id: i64,
    tenant_id: i64,
    name: String,
    version: String,
    sha256: String,
    world: String,
    size: i64,
    manifest: String,
    created_at: i64,
}

/// Plugin columns without the blob.
fn plugin_meta() -> sea_orm::Select<plugins::Entity> {
    plugins::Entity::find().select_only().columns([
        plugins::Column::Id,
        plugins::Column::TenantId,
        plugins::Column::Name,
        plugins::Column::Version,
        plugins::Column::Sha256,
        plugins::Column::World,
        plugins::Column::Size,
        plugins::Column::Manifest,
        plugins::Column::CreatedAt,
    ])
}

impl Store {
    /// Every tenant, by id.
    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let rows = tenants::Entity::find()
            .order_by_asc(tenants::Column::Id)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(TenantRecord::from).collect())
    }

    /// Creates a tenant; a taken name is [`StoreError::Conflict`].
    pub async fn create_tenant_checked(&self, name: &str) -> Result<TenantRecord, StoreError> {
        let at = now_ms();
        let inserted = tenants::Entity::insert(tenants::ActiveModel {
            id: NotSet,
            name: Set(name.to_owned()),
            created_at: Set(at),
            limits: Set(None),
        })
        .exec(&self.db)
        .await
        .map_err(|e| conflict(e, &format!("tenant `{name}` exists")))?;
        Ok(TenantRecord {
            id: inserted.last_insert_id,
            name: name.to_owned(),
            created_at: at,
            limits: None,
        })
    }

    /// A tenant by id.
    pub async fn tenant(&self, id: i64) -> Result<Option<TenantRecord>, StoreError> {
        Ok(tenants::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .map(TenantRecord::from))
    }

    /// Sets (or with `None` clears) a tenant's limit overrides. False when there is no such
    /// tenant.
    pub async fn set_tenant_limits(
        &self,
        id: i64,
        limits: Option<String>,
    ) -> Result<bool, StoreError> {
        let r = tenants::Entity::update_many()
            .col_expr(tenants::Column::Limits, Expr::value(limits))
            .filter(tenants::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected == 1)
    }

    /// What a tenant stores: its pipelines, its plugin versions and their bytes.
    pub async fn tenant_usage(&self, tenant_id: i64) -> Result<TenantUsage, StoreError> {
        let pipelines = pipelines::Entity::find()
            .filter(pipelines::Column::TenantId.eq(tenant_id))
            .count(&self.db)
            .await?;
        // One size per plugin version (a few hundred at most): summed here, the same on
        // SQLite and MySQL (whose SUM is a DECIMAL).
        let sizes: Vec<i64> = plugins::Entity::find()
            .select_only()
            .column(plugins::Column::Size)
            .filter(plugins::Column::TenantId.eq(tenant_id))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(TenantUsage {
            pipelines,
            plugins: sizes.len() as u64,
            plugin_bytes: sizes.iter().map(|&n| n.max(0) as u64).sum(),
        })
    }

    /// True once an admin key exists.
    pub async fn has_admin_key(&self) -> Result<bool, StoreError> {
        let n = api_keys::Entity::find()
            .filter(api_keys::Column::TenantId.eq(ADMIN_TENANT))
            .filter(api_keys::Column::Revoked.eq(false))
            .count(&self.db)
            .await?;
        Ok(n > 0)
    }

    /// Stores a plugin; a taken (name, version) is [`StoreError::Conflict`].
    pub async fn insert_plugin(&self, p: NewPlugin) -> Result<PluginRecord, StoreError> {
        let at = now_ms();
        let size = i64::try_from(p.bytes.len()).unwrap_or(i64::MAX);
        let what = format!("plugin {}@{} exists", p.name, p.version);
        let inserted = plugins::Entity::insert(plugins::ActiveModel {
            id: NotSet,
            tenant_id: Set(p.tenant_id),
            name: Set(p.name.clone()),
            version: Set(p.version.clone()),
            sha256: Set(p.sha256.clone()),
            world: Set(p.world.clone()),
            size: Set(size),
            manifest: Set(p.manifest.clone()),
            bytes: Set(p.bytes),
            created_at: Set(at),
        })
        .exec(&self.db)
        .await
        .map_err(|e| conflict(e, &what))?;
        Ok(PluginRecord {
            id: inserted.last_insert_id,
            tenant_id: p.tenant_id,
            name: p.name,
            version: p.version,
            sha256: p.sha256,
            world: p.world,
            size,
            manifest: p.manifest,
            created_at: at,
        })
    }

    /// A tenant's plugins, by name then id.
    pub async fn plugins(&self, tenant_id: i64) -> Result<Vec<PluginRecord>, StoreError> {
        let rows = plugin_meta()
            .filter(plugins::Column::TenantId.eq(tenant_id))
            .order_by_asc(plugins::Column::Name)
            .order_by_asc(plugins::Column::Id)
            .into_model::<PluginMeta>()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(plugin_record).collect())
    }

    /// A tenant's plugin by id.
    pub async fn plugin(
        &self,
        tenant_id: i64,
        id: i64,
    ) -> Result<Option<PluginRecord>, StoreError> {
        let row = plugin_meta()
            .filter(plugins::Column::TenantId.eq(tenant_id))
            .filter(plugins::Column::Id.eq(id))
            .into_model::<PluginMeta>()
            .one(&self.db)
            .await?;
        Ok(row.map(plugin_record))
    }

    /// A tenant's plugin by reference: `sha256:<hex>`, `name@version`, or `name` (its most
    /// recently uploaded version).
    pub async fn plugin_by_ref(
        &self,
        tenant_id: i64,
        reference: &str,
    ) -> Result<Option<PluginRecord>, StoreError> {
        let mut q = plugin_meta().filter(plugins::Column::TenantId.eq(tenant_id));
        if let Some(sha) = reference.strip_prefix("sha256:") {
            q = q.filter(plugins::Column::Sha256.eq(sha.to_ascii_lowercase()));
        } else if let Some((name, version)) = reference.split_once('@') {
            q = q
                .filter(plugins::Column::Name.eq(name))
                .filter(plugins::Column::Version.eq(version));
        } else {
            q = q.filter(plugins::Column::Name.eq(reference));
        }
        let row = q
            .order_by_desc(plugins::Column::Id)
            .into_model::<PluginMeta>()
            .one(&self.db)
            .await?;
        Ok(row.map(plugin_record))
    }

    /// A tenant's plugin's component bytes.
    pub async fn plugin_bytes(
        &self,
        tenant_id: i64,
        id: i64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let row = plugins::Entity::find()
            .filter(plugins::Column::TenantId.eq(tenant_id))
            .filter(plugins::Column::Id.eq(id))
            .one(&self.db)
            .await?;
        Ok(row.map(|m| m.bytes))
    }

    /// Deletes a tenant's plugin; false if it had none with this id.
    pub async fn delete_plugin(&self, tenant_id: i64, id: i64) -> Result<bool, StoreError> {
        let r = plugins::Entity::delete_many()
            .filter(plugins::Column::TenantId.eq(tenant_id))
            .filter(plugins::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected > 0)
    }

    /// Whether any tenant has a plugin with these bytes (for the server's compile cache,
    /// never answered to a tenant).
    pub async fn sha256_stored(&self, sha256: &str) -> Result<bool, StoreError> {
        Ok(plugins::Entity::find()
            .filter(plugins::Column::Sha256.eq(sha256))
            .count(&self.db)
            .await?
            > 0)
    }

    /// Stores a pipeline; a taken name is [`StoreError::Conflict`].
    pub async fn insert_pipeline(
        &self,
        tenant_id: i64,
        name: &str,
        spec: &str,
    ) -> Result<PipelineRecord, StoreError> {
        let at = now_ms();
        let inserted = pipelines::Entity::insert(pipelines::ActiveModel {
            id: NotSet,
            tenant_id: Set(tenant_id),
            name: Set(name.to_owned()),
            spec: Set(spec.to_owned()),
            status: Set("created".into()),
            created_at: Set(at),
            error: Set(None),
        })
        .exec(&self.db)
        .await
        .map_err(|e| conflict(e, &format!("pipeline `{name}` exists")))?;
        Ok(PipelineRecord {
            id: inserted.last_insert_id,
            tenant_id,
            name: name.to_owned(),
            spec: spec.to_owned(),
            status: "created".into(),
            created_at: at,
            error: None,
        })
    }

    /// A tenant's pipelines, by id.
    pub async fn pipelines(&self, tenant_id: i64) -> Result<Vec<PipelineRecord>, StoreError> {
        let rows = pipelines::Entity::find()
            .filter(pipelines::Column::TenantId.eq(tenant_id))
            .order_by_asc(pipelines::Column::Id)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(pipeline_record).collect())
    }

    /// Every pipeline with this status, of every tenant (for resuming at start).
    pub async fn pipelines_with_status(
        &self,
        status: &str,
    ) -> Result<Vec<PipelineRecord>, StoreError> {
        let rows = pipelines::Entity::find()
            .filter(pipelines::Column::Status.eq(status))
            .order_by_asc(pipelines::Column::Id)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(pipeline_record).collect())
    }

    /// A tenant's pipeline by id.
    pub async fn pipeline(
        &self,
        tenant_id: i64,
        id: i64,
    ) -> Result<Option<PipelineRecord>, StoreError> {
        let row = pipelines::Entity::find()
            .filter(pipelines::Column::TenantId.eq(tenant_id))
            .filter(pipelines::Column::Id.eq(id))
            .one(&self.db)
            .await?;
        Ok(row.map(pipeline_record))
    }

    /// Sets a tenant's pipeline's status; false if it had none with this id.
    pub async fn set_pipeline_status(
        &self,
        tenant_id: i64,
        id: i64,
        status: &str,
    ) -> Result<bool, StoreError> {
        let r = pipelines::Entity::update_many()
            .col_expr(pipelines::Column::Status, Expr::value(status))
            .col_expr(
                pipelines::Column::Error,
                Expr::value(Option::<String>::None),
            )
            .filter(pipelines::Column::TenantId.eq(tenant_id))
            .filter(pipelines::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected > 0)
    }

    /// Marks a tenant's pipeline `failed`, with the reason (shown until it starts again).
    pub async fn set_pipeline_failed(
        &self,
        tenant_id: i64,
        id: i64,
        error: &str,
    ) -> Result<bool, StoreError> {
        let r = pipelines::Entity::update_many()
            .col_expr(pipelines::Column::Status, Expr::value("failed"))
            .col_expr(pipelines::Column::Error, Expr::value(error.to_owned()))
            .filter(pipelines::Column::TenantId.eq(tenant_id))
            .filter(pipelines::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected > 0)
    }

    /// Deletes a tenant's pipeline row (its data is removed with [`Store::reset_pipeline`]).
    pub async fn delete_pipeline(&self, tenant_id: i64, id: i64) -> Result<bool, StoreError> {
        let r = pipelines::Entity::delete_many()
            .filter(pipelines::Column::TenantId.eq(tenant_id))
            .filter(pipelines::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected > 0)
    }

    /// True if any recorded deployment of any of these pipelines used the plugin.
    pub async fn plugin_in_use(
        &self,
        pipelines_internal: &[String],
        sha256: &str,
    ) -> Result<bool, StoreError> {
        if pipelines_internal.is_empty() {
            return Ok(false);
        }
        let n = deployments::Entity::find()
            .filter(
                deployments::Column::Pipeline.is_in(pipelines_internal.iter().map(String::as_str)),
            )
            .filter(deployments::Column::PluginSha256.eq(sha256))
            .count(&self.db)
            .await?;
        Ok(n > 0)
    }

    /// A page of a pipeline's predictions in (partition, offset) order, after `after`.
    pub async fn predictions_page(
        &self,
        pipeline: &str,
        filter: &ResultFilter,
        after: Option<(i32, i64)>,
    ) -> Result<Vec<Prediction>, StoreError> {
        let mut q = predictions::Entity::find().filter(predictions::Column::Pipeline.eq(pipeline));
        if let Some(k) = &filter.key {
            q = q.filter(predictions::Column::Key.eq(k.as_str()));
        }
        if let Some(t) = filter.from_ts {
            q = q.filter(predictions::Column::Ts.gte(t));
        }
        if let Some(t) = filter.to_ts {
            q = q.filter(predictions::Column::Ts.lt(t));
        }
        if let Some((p, o)) = after {
            q = q.filter(
                Condition::any()
                    .add(predictions::Column::Partition.gt(p))
                    .add(
                        Condition::all()
                            .add(predictions::Column::Partition.eq(p))
                            .add(predictions::Column::Offset.gt(o)),
                    ),
            );
        }
        let rows = q
            .order_by_asc(predictions::Column::Partition)
            .order_by_asc(predictions::Column::Offset)
            .limit(filter.limit)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(Prediction::from).collect())
    }

    /// The last stored offset of each partition of a pipeline's predictions (where a live
    /// stream of them starts).
    pub async fn prediction_heads(
        &self,
        pipeline: &str,
    ) -> Result<std::collections::BTreeMap<i32, i64>, StoreError> {
        let rows: Vec<(i32, Option<i64>)> = predictions::Entity::find()
            .select_only()
            .column(predictions::Column::Partition)
            .column_as(predictions::Column::Offset.max(), "head")
            .filter(predictions::Column::Pipeline.eq(pipeline))
            .group_by(predictions::Column::Partition)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(p, o)| Some((p, o?)))
            .collect())
    }

    /// A pipeline's predictions of one partition after `after` (all with `None`), in offset
    /// order, at most `limit`, of one key if `key` is set.
    pub async fn predictions_of_partition(
        &self,
        pipeline: &str,
        partition: i32,
        after: Option<i64>,
        key: Option<&str>,
        limit: u64,
    ) -> Result<Vec<Prediction>, StoreError> {
        let mut q = predictions::Entity::find()
            .filter(predictions::Column::Pipeline.eq(pipeline))
            .filter(predictions::Column::Partition.eq(partition));
        if let Some(o) = after {
            q = q.filter(predictions::Column::Offset.gt(o));
        }
        if let Some(k) = key {
            q = q.filter(predictions::Column::Key.eq(k));
        }
        let rows = q
            .order_by_asc(predictions::Column::Offset)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(Prediction::from).collect())
    }

    /// A page of a pipeline's window results in (key, window start) order, after `after`.
    pub async fn window_results_page(
        &self,
        pipeline: &str,
        filter: &ResultFilter,
        after: Option<(String, i64)>,
    ) -> Result<Vec<WindowResult>, StoreError> {
        let mut q =
            window_results::Entity::find().filter(window_results::Column::Pipeline.eq(pipeline));
        if let Some(k) = &filter.key {
            q = q.filter(window_results::Column::Key.eq(k.as_str()));
        }
        if let Some(t) = filter.from_ts {
            q = q.filter(window_results::Column::WindowStart.gte(t));
        }
        if let Some(t) = filter.to_ts {
            q = q.filter(window_results::Column::WindowStart.lt(t));
        }
        if let Some((k, s)) = after {
            q = q.filter(
                Condition::any()
                    .add(window_results::Column::Key.gt(k.as_str()))
                    .add(
                        Condition::all()
                            .add(window_results::Column::Key.eq(k.as_str()))
                            .add(window_results::Column::WindowStart.gt(s)),
                    ),
            );
        }
        let rows = q
            .order_by_asc(window_results::Column::Key)
            .order_by_asc(window_results::Column::WindowStart)
            .limit(filter.limit)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(WindowResult::from).collect())
    }
}

impl Store {
    /// The hashes of the admin keys, concatenated in id order: a server-side secret that
    /// survives restarts (for deriving signing keys).
    pub async fn admin_secret(&self) -> Result<String, StoreError> {
        let rows = api_keys::Entity::find()
            .filter(api_keys::Column::TenantId.eq(ADMIN_TENANT))
            .order_by_asc(api_keys::Column::Id)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|m| m.key_hash).collect())
    }

    /// Creates an API key row for a tenant that must exist; false if it does not.
    pub async fn add_tenant_key(
        &self,
        tenant_id: i64,
        key_hash: &str,
        label: &str,
    ) -> Result<bool, StoreError> {
        if tenants::Entity::find_by_id(tenant_id)
            .one(&self.db)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        self.insert_api_key(tenant_id, key_hash, label).await?;
        Ok(true)
    }
}
