//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations.

use super::{error, gaps, handlers, ingest, keys, limits, pipelines, stream};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// weir's API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "weir",
        description = "Real-time ML pipelines with user-written WebAssembly operators. Every error is `{code, message}` JSON. A tenant's key reaches only its own objects: another tenant's id is 404.",
    ),
    paths(
        handlers::healthz,
        handlers::readyz,
        handlers::metrics,
        handlers::openapi,
        handlers::create_tenant,
        handlers::list_tenants,
        handlers::create_key,
        keys::list,
        keys::revoke,
        keys::rotate,
        limits::get,
        limits::set,
        handlers::whoami,
        handlers::upload_plugin,
        handlers::list_plugins,
        handlers::get_plugin,
        handlers::download_plugin,
        handlers::plugin_logs,
        handlers::delete_plugin,
        pipelines::create,
        pipelines::list,
        pipelines::get,
        pipelines::start,
        pipelines::stop,
        ingest::events,
        pipelines::delete,
        pipelines::deployments,
        pipelines::metrics,
        pipelines::stage_action,
        pipelines::stage_abort,
        pipelines::predictions,
        stream::predictions,
        pipelines::windows,
        pipelines::training,
        gaps::list,
    ),
    components(schemas(error::ErrorBody)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("wk_<64 hex digits>")
                    .build(),
            ),
        );
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
