//! Per-tenant quotas: how many pipelines a tenant may have and run, and how many plugins
//! (and plugin bytes) it may store. The server sets the defaults ([`ApiConfig::quotas`]);
//! the admin overrides them per tenant (`PUT /v1/tenants/{id}/limits` with `"quotas"`,
//! stored with the tenant). Reaching one is 403 `quota_exceeded`, naming the quota, its
//! value and the tenant's use. `GET /v1/tenants/{id}/limits` shows both.
//!
//! The CPU a tenant's running pipelines share is governed apart from these counts: see
//! `weir_worker::CpuShare`.
//!
//! [`ApiConfig::quotas`]: super::ApiConfig::quotas

use super::error::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A tenant's quotas (or its use of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Pipelines stored, running or not.
    pub pipelines: u64,
    /// Pipelines running at once.
    pub running_pipelines: u64,
    /// Plugin versions stored.
    pub plugins: u64,
    /// Bytes of plugin components stored.
    pub plugin_bytes: u64,
}

impl Default for Quotas {
    /// The server's defaults: 20 pipelines, 4 of them running, 100 plugin versions, 1 GiB
    /// of plugins.
    fn default() -> Self {
        Quotas {
            pipelines: 20,
            running_pipelines: 4,
            plugins: 100,
            plugin_bytes: 1 << 30,
        }
    }
}

/// One quota, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// [`Quotas::pipelines`].
    Pipelines,
    /// [`Quotas::running_pipelines`].
    RunningPipelines,
    /// [`Quotas::plugins`].
    Plugins,
    /// [`Quotas::plugin_bytes`].
    PluginBytes,
}

impl Quota {
    /// The quota's field name.
    pub fn name(self) -> &'static str {
        match self {
            Quota::Pipelines => "pipelines",
            Quota::RunningPipelines => "running_pipelines",
            Quota::Plugins => "plugins",
            Quota::PluginBytes => "plugin_bytes",
        }
    }

    fn of(self, q: &Quotas) -> u64 {
        match self {
            Quota::Pipelines => q.pipelines,
            Quota::RunningPipelines => q.running_pipelines,
            Quota::Plugins => q.plugins,
            Quota::PluginBytes => q.plugin_bytes,
        }
    }
}

/// Checks that `adding` more of `quota` keeps `usage` within `quotas`: 403
/// `quota_exceeded` naming the quota, its value and the use otherwise.
pub fn check(quotas: &Quotas, usage: &Quotas, quota: Quota, adding: u64) -> Result<(), ApiError> {
    let (max, used) = (quota.of(quotas), quota.of(usage));
    if used.saturating_add(adding) <= max {
        return Ok(());
    }
    let what = match quota {
        Quota::PluginBytes => {
            format!("{used} bytes of plugins are stored and this adds {adding}; the quota is {max}")
        }
        Quota::RunningPipelines => {
            format!("{used} pipelines are running; the quota is {max} (stop one first)")
        }
        Quota::Pipelines => format!("{used} pipelines exist; the quota is {max}"),
        Quota::Plugins => format!("{used} plugin versions are stored; the quota is {max}"),
    };
    Err(ApiError::quota_exceeded(format!(
        "quota `{}` reached: {what} (an admin can change it: PUT /v1/tenants/{{id}}/limits)",
        quota.name()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_is_named_when_reached() {
        let q = Quotas {
            pipelines: 2,
            running_pipelines: 1,
            plugins: 3,
            plugin_bytes: 100,
        };
        let used = Quotas {
            pipelines: 1,
            running_pipelines: 1,
            plugins: 3,
            plugin_bytes: 60,
        };
        assert!(check(&q, &used, Quota::Pipelines, 1).is_ok());
        let e = check(&q, &used, Quota::RunningPipelines, 1).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (403, "quota_exceeded"));
        assert!(
            e.message.starts_with(
                "quota `running_pipelines` reached: 1 pipelines are running; the quota is 1"
            ),
            "{}",
            e.message
        );
        let e = check(&q, &used, Quota::Plugins, 1).unwrap_err();
        assert!(
            e.message.starts_with("quota `plugins` reached"),
            "{}",
            e.message
        );
        assert!(check(&q, &used, Quota::PluginBytes, 40).is_ok());
        let e = check(&q, &used, Quota::PluginBytes, 41).unwrap_err();
        assert!(
            e.message
                .contains("60 bytes of plugins are stored and this adds 41; the quota is 100"),
            "{}",
            e.message
        );
    }
}
