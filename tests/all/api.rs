//! The HTTP API, in-process through `warp::test`: every route's success and error answers
//! (400, 401, 404, 409, 413, 422, 429), a tenant-isolation matrix, and a live pipeline over
//! the embedded broker driven through swaps, rollback, canary, shadow and promote.

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_server::api::{self, ApiConfig, AppState};
use weir_store::Store;
use weir_worker::kafka::{Broker, EmbeddedBroker, Producer};

pub(crate) const ADMIN: &str =
    "wk_00000000000000000000000000000000000000000000000000000000000000ad";

pub(crate) struct Api {
    pub(crate) state: Arc<AppState>,
    broker: Option<Arc<EmbeddedBroker>>,
}

pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) body: Value,
    raw: Vec<u8>,
    headers: warp::http::HeaderMap,
}

impl Api {
    pub(crate) async fn new(config: ApiConfig, broker: bool) -> Api {
        Self::with_engine(config, broker, crate::common::engine()).await
    }

    async fn with_engine(config: ApiConfig, broker: bool, engine: weir_engine::Engine) -> Api {
        let store = Arc::new(Store::connect("sqlite::memory:").await.unwrap());
        let b = broker.then(|| Arc::new(EmbeddedBroker::start().unwrap()));
        let kafka = match &b {
            Some(b) => Broker::Embedded(b.clone()),
            None => Broker::External("127.0.0.1:1".into()),
        };
        let (state, printed) = AppState::new(store, engine, kafka, config, Some(ADMIN.into()))
            .await
            .unwrap();
        assert!(printed.is_none(), "a given admin key is not printed");
        Api { state, broker: b }
    }

    pub(crate) fn bootstrap(&self) -> String {
        self.broker.as_ref().unwrap().bootstrap()
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Resp {
        let mut r = warp::test::request().method(method).path(path);
        if let Some(k) = key {
            r = r.header("authorization", format!("Bearer {k}"));
        }
        if let Some(b) = body {
            r = r.header("content-length", b.len().to_string()).body(b);
        }
        let res = r.reply(&api::routes(self.state.clone())).await;
        let raw = res.body().to_vec();
        Resp {
            status: res.status().as_u16(),
            body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
            raw,
            headers: res.headers().clone(),
        }
    }

    pub(crate) async fn get(&self, path: &str, key: &str) -> Resp {
        self.call("GET", path, Some(key), None).await
    }

    pub(crate) async fn post(&self, path: &str, key: &str, body: Value) -> Resp {
        self.call("POST", path, Some(key), Some(body.to_string().into_bytes()))
            .await
    }

    /// Creates a tenant; returns its id and key.
    pub(crate) async fn tenant(&self, name: &str) -> (i64, String) {
        let r = self
            .post("/v1/tenants", ADMIN, json!({ "name": name }))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        (
            r.body["id"].as_i64().unwrap(),
            r.body["api_key"].as_str().unwrap().to_owned(),
        )
    }

    /// Uploads `standardize@1.0.0` and `logistic@1.0.0` (the stages of [`SPEC`]).
    pub(crate) async fn scoring_plugins(&self, key: &str) {
        for name in ["standardize", "logistic"] {
            let r = self.upload(key, name, "1.0.0", &plugin(name)).await;
            assert_eq!(r.status, 201, "{name}: {}", r.body);
        }
    }

    pub(crate) async fn upload(&self, key: &str, name: &str, version: &str, bytes: &[u8]) -> Resp {
        self.call(
            "POST",
            &format!("/v1/plugins?name={name}&version={version}"),
            Some(key),
            Some(bytes.to_vec()),
        )
        .await
    }
}

pub(crate) fn plugin(name: &str) -> Vec<u8> {
    let path = match name {
        "standardize" => weir_guests::plugins::STANDARDIZE,
        "logistic" => weir_guests::plugins::LOGISTIC,
        _ => weir_guests::plugins::WINDOW_STATS,
    };
    weir_guests::read(path).unwrap()
}

/// The same component with a custom section appended: a distinct plugin (another sha256,
/// so another version) that behaves identically.
pub(crate) fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    let mut payload = vec![tag.len() as u8];
    payload.extend_from_slice(tag.as_bytes());
    payload.extend_from_slice(b"weir test variant");
    let mut out = bytes.to_vec();
    out.push(0);
    out.push(payload.len() as u8);
    out.extend_from_slice(&payload);
    out
}

pub(crate) fn err_code(r: &Resp) -> &str {
    r.body["code"].as_str().unwrap_or("")
}

pub(crate) const SPEC: &str = r#"
name = "scores"

[source]
topic = "events"
inputs_field = "x"
input_dims = 8
label_field = "label"

[watermark]
idle_timeout_ms = 1000

[extractor]
plugin = "standardize@1.0.0"
config = { mean = [0.835525, -2.002768, 0.501294, 5.006266, -0.000425, 10.000836, -1.004835, 2.985891], std = [1.90274, 0.998788, 1.998198, 2.993294, 0.499558, 3.976339, 0.997564, 2.004694] }

[model]
plugin = "logistic@1.0.0"
config = { coef = [1.521876, -0.802983, 0.602322, -0.009225, 1.000721, -0.483541, 0.883641, 0.297362, 0.667308], intercept = -0.909968 }

[sink]
topic = "scores"
dead_letter_topic = "dead"
"#;

/// Every route of the API (method, path with ids 1), as the router and the OpenAPI
/// document must both know them.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/metrics"),
    ("POST", "/v1/tenants"),
    ("GET", "/v1/tenants"),
    ("POST", "/v1/tenants/1/keys"),
    ("GET", "/v1/tenants/1/keys"),
    ("DELETE", "/v1/tenants/1/keys/1"),
    ("POST", "/v1/tenants/1/keys/1/rotate"),
    ("GET", "/v1/tenants/1/limits"),
    ("PUT", "/v1/tenants/1/limits"),
    ("GET", "/v1/whoami"),
    ("POST", "/v1/plugins?name=a&version=1.0.0"),
    ("GET", "/v1/plugins"),
    ("GET", "/v1/plugins/1"),
    ("GET", "/v1/plugins/1/download"),
    ("GET", "/v1/plugins/1/logs"),
    ("DELETE", "/v1/plugins/1"),
    ("POST", "/v1/pipelines"),
    ("GET", "/v1/pipelines"),
    ("GET", "/v1/pipelines/1"),
    ("DELETE", "/v1/pipelines/1"),
    ("POST", "/v1/pipelines/1/start"),
    ("POST", "/v1/pipelines/1/stop"),
    ("POST", "/v1/pipelines/1/events"),
    ("GET", "/v1/pipelines/1/deployments"),
    ("GET", "/v1/pipelines/1/metrics"),
    ("GET", "/v1/pipelines/1/training"),
    ("GET", "/v1/pipelines/1/predictions"),
    ("GET", "/v1/pipelines/1/predictions/stream"),
    ("GET", "/v1/pipelines/1/windows"),
    ("GET", "/v1/pipelines/1/gaps"),
    ("POST", "/v1/pipelines/1/stages/model/swap"),
    ("DELETE", "/v1/pipelines/1/stages/model/canary"),
];

/// Issue 15, rows 2, 5 and 12: a spec cannot raise its own sandbox, open unbounded windows
/// or name topics Kafka would refuse; the admin sets each tenant's ceiling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_sets_the_sandbox_not_the_tenant() {
    let api = Api::new(ApiConfig::default(), false).await;
    let (acme, key) = api.tenant("acme").await;
    let (_, other) = api.tenant("other").await;
    api.scoring_plugins(&key).await;
    let with_model = |extra: &str| {
        SPEC.replace(
            "intercept = -0.909968 }\n",
            &format!("intercept = -0.909968 }}\n{extra}\n"),
        )
    };
    let create = |spec: String| {
        let api = &api;
        let key = key.clone();
        async move {
            api.post("/v1/pipelines", &key, json!({ "spec": spec }))
                .await
        }
    };
    // The reported spec: a terabyte, unbounded fuel, a day per call, a thousand instances.
    for (limits, what) in [
        (
            "memory_bytes = 1099511627776",
            "limits.memory_bytes = 1099511627776 is above this tenant's ceiling of 268435456",
        ),
        (
            "fuel_per_call = 9223372036854775807",
            "limits.fuel_per_call = 9223372036854775807 is above this tenant's ceiling of 1000000000",
        ),
        (
            "deadline_ms = 86400000",
            "limits.deadline_ms = 86400000 is above this tenant's ceiling of 5000",
        ),
        (
            "instances = 1000",
            "limits.instances = 1000 is above this tenant's ceiling of 20",
        ),
    ] {
        let r = create(with_model(&format!("limits = {{ {limits} }}"))).await;
        assert_eq!(
            (r.status, err_code(&r)),
            (422, "over_ceiling"),
            "{}",
            r.body
        );
        let m = r.body["message"].as_str().unwrap();
        assert!(m.starts_with("stage `model`: ") && m.contains(what), "{m}");
    }
    let r = create(with_model("grants = { clocks = true }")).await;
    assert_eq!(
        (r.status, err_code(&r)),
        (422, "over_ceiling"),
        "{}",
        r.body
    );
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("grants.clocks is not granted")
    );
    // Windows and topics.
    let sliding = SPEC.replace(
        "[sink]",
        "[window]\nkind = \"sliding\"\nsize_ms = 1000000000000\nslide_ms = 1\naggregates = [\"count\"]\n\n[sink]",
    );
    let r = create(sliding).await;
    assert_eq!(
        (r.status, err_code(&r)),
        (422, "invalid_spec"),
        "{}",
        r.body
    );
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("window.size_ms is 1000000000000; this server allows at most 604800000"),
        "{}",
        r.body
    );
    for bad in ["../x", "a/b", "a\\nb", " "] {
        let r = create(SPEC.replace("topic = \"events\"", &format!("topic = \"{bad}\""))).await;
        assert_eq!(
            (r.status, err_code(&r)),
            (422, "invalid_spec"),
            "{bad}: {}",
            r.body
        );
        assert!(
            r.body["message"].as_str().unwrap().contains("source.topic"),
            "{}",
            r.body
        );
    }
    // 249 characters are a valid topic, but not with the tenant's prefix.
    let r = create(SPEC.replace(
        "topic = \"events\"",
        &format!("topic = \"{}\"", "e".repeat(249)),
    ))
    .await;
    assert_eq!(
        (r.status, err_code(&r)),
        (422, "invalid_spec"),
        "{}",
        r.body
    );
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("with the tenant's prefix `acme.`"),
        "{}",
        r.body
    );
    // The ceiling is visible to its tenant, and to no other; only the admin sets it.
    let path = format!("/v1/tenants/{acme}/limits");
    let r = api.get(&path, &key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["sandbox"]["limits"]["memory_bytes"], 268435456);
    assert_eq!(r.body["sandbox"]["grants"]["clocks"], false);
    assert_eq!(r.body["overrides"], json!({}));
    assert_eq!(api.get(&path, &other).await.status, 404);
    let raise = json!({ "sandbox": { "limits": { "memory_bytes": 1u64 << 40 }, "grants": { "clocks": true } } });
    let r = api
        .call(
            "PUT",
            &path,
            Some(&key),
            Some(raise.to_string().into_bytes()),
        )
        .await;
    assert_eq!((r.status, err_code(&r)), (403, "admin_only"), "{}", r.body);
    let r = api
        .call(
            "PUT",
            &path,
            Some(ADMIN),
            Some(
                json!({ "sandbox": { "limits": { "memroy_bytes": 1 } } })
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `memroy_bytes`"),
        "{}",
        r.body
    );
    let r = api
        .call(
            "PUT",
            &path,
            Some(ADMIN),
            Some(raise.to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["sandbox"]["limits"]["memory_bytes"], 1u64 << 40);
    assert_eq!(r.body["sandbox"]["limits"]["deadline_ms"], 5000);
    assert_eq!(r.body["defaults"]["limits"]["memory_bytes"], 268435456);
    let r = create(with_model(
        "limits = { memory_bytes = 1099511627776 }\ngrants = { clocks = true }",
    ))
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // Back to the defaults: the same spec is refused again.
    let r = api
        .call("PUT", &path, Some(ADMIN), Some(b"{}".to_vec()))
        .await;
    assert_eq!(
        (r.status, &r.body["overrides"]),
        (200, &json!({})),
        "{}",
        r.body
    );
    let r = create(
        with_model("limits = { memory_bytes = 1099511627776 }")
            .replace("name = \"scores\"", "name = \"again\""),
    )
    .await;
    assert_eq!(
        (r.status, err_code(&r)),
        (422, "over_ceiling"),
        "{}",
        r.body
    );
    let r = api
        .call(
            "PUT",
            "/v1/tenants/999/limits",
            Some(ADMIN),
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(r.status, 404);
}

/// Issue 15, row 9: keys are listed (with their last use), made, revoked and rotated by
/// their tenant or the admin; a new admin key revokes the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_revoked_and_rotated() {
    let api = Api::new(ApiConfig::default(), false).await;
    let (id, first) = api.tenant("acme").await;
    let (other_id, other) = api.tenant("other").await;
    assert_eq!(api.get("/v1/whoami", &first).await.status, 200);
    let path = format!("/v1/tenants/{id}/keys");
    let r = api.get(&path, &first).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let keys = r.body.as_array().unwrap().clone();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["label"], "first key");
    assert_eq!(keys[0]["revoked"], false);
    let used = keys[0]["last_used_at"].as_i64().expect("used just now");
    assert!(used >= keys[0]["created_at"].as_i64().unwrap());
    let raw = String::from_utf8_lossy(&r.raw).into_owned();
    assert!(!raw.contains(&first[3..]) && !raw.contains("hash"), "{raw}");
    assert_eq!(api.get(&path, &other).await.status, 404);
    // The tenant makes another key and rotates its first.
    let r = api.call("POST", &path, Some(&first), None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let second = r.body["api_key"].as_str().unwrap().to_owned();
    let first_id = keys[0]["id"].as_i64().unwrap();
    let r = api
        .call(
            "POST",
            &format!("{path}/{first_id}/rotate"),
            Some(&second),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let rotated = r.body["api_key"].as_str().unwrap().to_owned();
    assert_eq!(api.get("/v1/whoami", &first).await.status, 401);
    assert_eq!(api.get("/v1/whoami", &rotated).await.status, 200);
    let r = api
        .call(
            "POST",
            &format!("{path}/{first_id}/rotate"),
            Some(&rotated),
            None,
        )
        .await;
    assert_eq!(r.status, 404, "a revoked key is not rotated again");
    // The admin revokes the second key; another tenant cannot touch acme's keys.
    let keys = api.get(&path, ADMIN).await.body;
    let labels: Vec<(&str, bool)> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["label"].as_str().unwrap(),
                k["revoked"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        labels,
        [("first key", true), ("api", false), ("first key", false)]
    );
    let second_id = keys[1]["id"].as_i64().unwrap();
    let r = api
        .call("DELETE", &format!("{path}/{second_id}"), Some(&other), None)
        .await;
    assert_eq!(r.status, 404);
    let r = api
        .call("DELETE", &format!("{path}/{second_id}"), Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(api.get("/v1/whoami", &second).await.status, 401);
    let theirs = api
        .get(&format!("/v1/tenants/{other_id}/keys"), ADMIN)
        .await
        .body[0]["id"]
        .as_i64()
        .unwrap();
    let r = api
        .call("DELETE", &format!("{path}/{theirs}"), Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 404, "not acme's key");
    assert_eq!(api.get("/v1/whoami", &other).await.status, 200);
    // A server started with a new admin key: the old one stops working.
    const NEW_ADMIN: &str = "wk_00000000000000000000000000000000000000000000000000000000000000be";
    let (state, _) = AppState::new(
        api.state.store.clone(),
        crate::common::engine(),
        Broker::External("127.0.0.1:1".into()),
        ApiConfig::default(),
        Some(NEW_ADMIN.into()),
    )
    .await
    .unwrap();
    let api = Api {
        state,
        broker: None,
    };
    assert_eq!(api.get("/v1/tenants", ADMIN).await.status, 401);
    assert_eq!(api.get("/v1/tenants", NEW_ADMIN).await.status, 200);
}

/// Issue 15, rows 10, 11 and 13: an upload says nothing about other tenants' uploads (it
/// compiles, and reports its own compile), a deleted plugin leaves the compile cache, and a
/// compile that timed out keeps its tenant's permit until it really ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compile_cache_keeps_tenants_apart_and_lets_go() {
    let engine = weir_engine::Engine::new(weir_engine::EngineOptions::default()).unwrap();
    let api = Api::with_engine(ApiConfig::default(), false, engine.clone()).await;
    let (_, a) = api.tenant("alpha").await;
    let (_, b) = api.tenant("beta").await;
    let bytes = plugin("logistic");
    let id = weir_engine::PluginId::of(&bytes);
    let r = api.upload(&a, "logistic", "1.0.0", &bytes).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(engine.compilations(), 1);
    let ms_a = r.body["details"]["compile_ms"].as_f64().unwrap();
    // The same bytes from another tenant: compiled again, its own figure.
    let r = api.upload(&b, "logistic", "1.0.0", &bytes).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(engine.compilations(), 2, "a cache hit would answer at once");
    let ms_b = r.body["details"]["compile_ms"].as_f64().unwrap();
    assert!(ms_b > ms_a / 4.0 && ms_b > 1.0, "{ms_a} vs {ms_b}");
    // Deleting one copy keeps the artifact (the other tenant stores it); the last lets go.
    let pa = api.get("/v1/plugins", &a).await.body[0]["id"]
        .as_i64()
        .unwrap();
    let pb = api.get("/v1/plugins", &b).await.body[0]["id"]
        .as_i64()
        .unwrap();
    assert!(engine.is_cached(&id));
    let r = api
        .call("DELETE", &format!("/v1/plugins/{pa}"), Some(&a), None)
        .await;
    assert_eq!(r.status, 204);
    assert!(engine.is_cached(&id));
    let r = api
        .call("DELETE", &format!("/v1/plugins/{pb}"), Some(&b), None)
        .await;
    assert_eq!(r.status, 204);
    assert!(
        !engine.is_cached(&id),
        "no plugin left: the artifact is dropped"
    );

    // A compile that times out holds its tenant's one permit until it ends.
    let engine = weir_engine::Engine::new(weir_engine::EngineOptions::default()).unwrap();
    let api = Api::with_engine(
        ApiConfig {
            compile_timeout: Duration::from_millis(1),
            compiles_per_tenant: 1,
            ..ApiConfig::default()
        },
        false,
        engine.clone(),
    )
    .await;
    let (_, a) = api.tenant("alpha").await;
    let r = api.upload(&a, "logistic", "1.0.0", &bytes).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let r = api.upload(&a, "logistic", "1.0.1", &bytes).await;
    assert_eq!(
        (r.status, err_code(&r)),
        (429, "rate_limited"),
        "the first compile still runs: {}",
        r.body
    );
    let t = Instant::now();
    while engine.compilations() < 1 {
        assert!(t.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Ended: the permit is free again.
    let t = Instant::now();
    loop {
        let r = api.upload(&a, "logistic", "1.0.2", &bytes).await;
        if r.status == 503 {
            break;
        }
        assert_eq!(r.status, 429, "{}", r.body);
        assert!(t.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Issue 15, row 7: a tenant sends its events through the API, with its key, into its own
/// pipeline's topic: no broker address, no other tenant's topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_ingested_through_the_api() {
    let api = Api::new(ApiConfig::default(), true).await;
    // The embedded broker listens on loopback only.
    assert!(
        api.bootstrap().starts_with("127.0.0.1:"),
        "{}",
        api.bootstrap()
    );
    let (_, key) = api.tenant("acme").await;
    let (_, other) = api.tenant("other").await;
    api.scoring_plugins(&key).await;
    let r = api
        .post("/v1/pipelines", &key, json!({ "spec": SPEC }))
        .await;
    let id = r.body["id"].as_i64().unwrap();
    assert_eq!(
        api.post(&format!("/v1/pipelines/{id}/start"), &key, json!({}))
            .await
            .status,
        200
    );
    let lines: String = weir_workload::Generator::new(300, 11)
        .map(|e| weir_workload::to_json_line(&e) + "\n")
        .collect();
    let path = format!("/v1/pipelines/{id}/events");
    // Checked before anything is written: a bad line is 400 naming it.
    let bad = format!("{lines}[1, 2]\n");
    let r = api
        .call("POST", &path, Some(&key), Some(bad.into_bytes()))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["message"], "line 301: expected a JSON object");
    assert_eq!(
        api.call("POST", &path, None, Some(lines.clone().into_bytes()))
            .await
            .status,
        401
    );
    assert_eq!(
        api.call(
            "POST",
            &path,
            Some(&other),
            Some(lines.clone().into_bytes())
        )
        .await
        .status,
        404
    );
    let r = api
        .call("POST", &path, Some(&key), Some(lines.into_bytes()))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["accepted"], 300);
    assert_eq!(r.body["topic"], "acme.events");
    // Every event is scored, once.
    let t = Instant::now();
    loop {
        let n = all_predictions(&api, &key, id).await.len();
        if n >= 300 {
            assert_eq!(n, 300);
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{n} of 300 scored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        api.post(&format!("/v1/pipelines/{id}/stop"), &key, json!({}))
            .await
            .status,
        200
    );
}

/// Issue 15, row 4: concurrent starts run one worker; a delete racing starts leaves none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_per_pipeline_whatever_the_concurrency() {
    let api = Api::new(ApiConfig::default(), true).await;
    let (_, key) = api.tenant("acme").await;
    api.scoring_plugins(&key).await;
    let r = api
        .post("/v1/pipelines", &key, json!({ "spec": SPEC }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().unwrap();
    let call = |method: &'static str, path: String| {
        let (state, key) = (api.state.clone(), key.clone());
        tokio::spawn(async move {
            warp::test::request()
                .method(method)
                .path(&path)
                .header("authorization", format!("Bearer {key}"))
                .reply(&api::routes(state))
                .await
                .status()
                .as_u16()
        })
    };
    let starts: Vec<_> = (0..8)
        .map(|_| call("POST", format!("/v1/pipelines/{id}/start")))
        .collect();
    let mut statuses = Vec::new();
    for s in starts {
        statuses.push(s.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409, 409, 409, 409, 409, 409, 409]);
    let running = api.state.manager.get(id).expect("one worker");
    assert!(running.is_alive());
    // A delete racing more starts: whichever order they take, no worker is left for the
    // deleted pipeline, and the stopped one has ended.
    let mut calls = vec![call("DELETE", format!("/v1/pipelines/{id}"))];
    calls.extend((0..4).map(|_| call("POST", format!("/v1/pipelines/{id}/start"))));
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap());
    }
    assert_eq!(statuses[0], 204, "{statuses:?}");
    assert!(
        statuses[1..].iter().all(|s| [200, 404, 409].contains(s)),
        "{statuses:?}"
    );
    assert!(!running.is_alive(), "the first worker was stopped");
    assert!(
        api.state.manager.get(id).is_none_or(|r| !r.is_alive()),
        "a worker runs for a deleted pipeline"
    );
    assert_eq!(
        api.get(&format!("/v1/pipelines/{id}"), &key).await.status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protected_route_needs_a_valid_key() {
    let api = Api::new(ApiConfig::default(), false).await;
    for (method, path) in ROUTES {
        for key in [
            None,
            Some("wk_nope"),
            Some(&*format!("wk_{}", "ab".repeat(32))),
        ] {
            let r = api.call(method, path, key, None).await;
            assert_eq!(r.status, 401, "{method} {path} with {key:?}: {}", r.body);
            assert_eq!(err_code(&r), "unauthorized");
        }
    }
    // Open routes.
    assert_eq!(api.call("GET", "/healthz", None, None).await.status, 200);
    assert_eq!(api.call("GET", "/readyz", None, None).await.status, 200);
    let r = api.call("GET", "/nope", None, None).await;
    assert_eq!((r.status, err_code(&r)), (404, "not_found"));
    let r = api.call("PUT", "/v1/plugins", Some(ADMIN), None).await;
    assert_eq!(r.status, 405, "{}", r.body);
    assert_eq!(err_code(&r), "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_keys() {
    let api = Api::new(ApiConfig::default(), false).await;
    let (id, key) = api.tenant("acme").await;
    assert_eq!(key.len(), 67);
    let r = api
        .post("/v1/tenants", ADMIN, json!({"name": "acme"}))
        .await;
    assert_eq!((r.status, err_code(&r)), (409, "conflict"));
    for bad in [
        json!({"name": "Acme"}),
        json!({"name": ""}),
        json!({"nom": "x"}),
    ] {
        let r = api.post("/v1/tenants", ADMIN, bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    let r = api
        .call(
            "POST",
            "/v1/tenants",
            Some(ADMIN),
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_eq!((r.status, err_code(&r)), (400, "bad_request"));
    let r = api.post("/v1/tenants", &key, json!({"name": "evil"})).await;
    assert_eq!((r.status, err_code(&r)), (403, "admin_only"));
    let r = api.get("/v1/tenants", ADMIN).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body[0]["name"], "acme");
    assert!(r.body[0].get("api_key").is_none(), "keys are never listed");
    let r = api.get("/v1/whoami", &key).await;
    assert_eq!(
        r.body,
        json!({"role": "tenant", "tenant_id": id, "tenant": "acme"})
    );
    let r = api
        .call("POST", &format!("/v1/tenants/{id}/keys"), Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 201);
    let key2 = r.body["api_key"].as_str().unwrap().to_owned();
    assert_ne!(key2, key);
    assert_eq!(api.get("/v1/whoami", &key2).await.body["tenant"], "acme");
    let r = api
        .call("POST", "/v1/tenants/999/keys", Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 404);
    // The admin key owns nothing.
    let r = api.get("/v1/plugins", ADMIN).await;
    assert_eq!((r.status, err_code(&r)), (403, "tenant_only"));
    // Oversized JSON bodies are refused before they are read.
    let big = vec![b' '; (1 << 20) + 1];
    let r = api
        .call("POST", "/v1/tenants", Some(ADMIN), Some(big))
        .await;
    assert_eq!((r.status, err_code(&r)), (413, "payload_too_large"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_upload_list_download_delete() {
    let api = Api::new(
        ApiConfig {
            max_plugin_bytes: 8 << 20,
            ..ApiConfig::default()
        },
        false,
    )
    .await;
    let (_, key) = api.tenant("acme").await;
    let bytes = plugin("logistic");
    let r = api.upload(&key, "logistic", "1.0.0", &bytes).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().unwrap();
    let sha = weir_engine::PluginId::of(&bytes).0;
    assert_eq!(r.body["sha256"], sha.as_str());
    assert_eq!(r.body["kind"], "model");
    assert_eq!(r.body["size"], bytes.len() as i64);
    assert!(r.body["details"]["compile_ms"].as_f64().is_some());

    let r = api.upload(&key, "logistic", "1.0.0", &bytes).await;
    assert_eq!((r.status, err_code(&r)), (409, "conflict"));
    for (name, version) in [
        ("logistic", "1.0"),
        ("logistic", "01.0.0"),
        ("-x", "1.0.0"),
        ("a%2Fb", "1.0.0"),
    ] {
        let r = api.upload(&key, name, version, &bytes).await;
        assert_eq!(r.status, 400, "{name}@{version}: {}", r.body);
    }
    let r = api
        .call(
            "POST",
            "/v1/plugins?name=x",
            Some(&key),
            Some(bytes.clone()),
        )
        .await;
    assert_eq!(r.status, 400, "a missing version: {}", r.body);
    let r = api.upload(&key, "junk", "1.0.0", b"\0asm not really").await;
    assert_eq!((r.status, err_code(&r)), (422, "invalid_plugin"));
    assert!(r.body["message"].as_str().unwrap().len() > 10, "{}", r.body);
    let core = wat::parse_str("(module)").unwrap();
    let r = api.upload(&key, "core", "1.0.0", &core).await;
    assert_eq!(
        (r.status, err_code(&r)),
        (422, "invalid_plugin"),
        "{}",
        r.body
    );
    let r = api
        .upload(&key, "huge", "1.0.0", &vec![0u8; (8 << 20) + 1])
        .await;
    assert_eq!((r.status, err_code(&r)), (413, "payload_too_large"));

    let r = api.get("/v1/plugins", &key).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    let r = api.get(&format!("/v1/plugins/{id}"), &key).await;
    assert_eq!(r.body["name"], "logistic");
    let r = api.get(&format!("/v1/plugins/{id}/download"), &key).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.raw, bytes);
    assert_eq!(r.headers["content-type"], "application/wasm");
    let r = api.get(&format!("/v1/plugins/{id}/logs"), &key).await;
    assert_eq!((r.status, r.body.clone()), (200, json!([])));
    let r = api.get("/v1/plugins/999", &key).await;
    assert_eq!((r.status, err_code(&r)), (404, "not_found"));

    // Refused while a pipeline names it; allowed once the pipeline is gone.
    api.upload(&key, "standardize", "1.0.0", &plugin("standardize"))
        .await;
    let r = api
        .post("/v1/pipelines", &key, json!({ "spec": SPEC }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let pid = r.body["id"].as_i64().unwrap();
    let r = api
        .call("DELETE", &format!("/v1/plugins/{id}"), Some(&key), None)
        .await;
    assert_eq!((r.status, err_code(&r)), (409, "conflict"), "{}", r.body);
    let r = api
        .call("DELETE", &format!("/v1/pipelines/{pid}"), Some(&key), None)
        .await;
    assert_eq!(r.status, 204);
    let r = api
        .call("DELETE", &format!("/v1/plugins/{id}"), Some(&key), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        api.get(&format!("/v1/plugins/{id}"), &key).await.status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_swaps_are_rate_limited() {
    let api = Api::new(
        ApiConfig {
            rate_per_minute: 6.0,
            rate_burst: 2.0,
            ..ApiConfig::default()
        },
        false,
    )
    .await;
    let (_, key) = api.tenant("acme").await;
    let (_, other) = api.tenant("other").await;
    let bytes = plugin("standardize");
    assert_eq!(api.upload(&key, "s", "1.0.0", &bytes).await.status, 201);
    assert_eq!(api.upload(&key, "s", "1.0.1", &bytes).await.status, 201);
    let r = api.upload(&key, "s", "1.0.2", &bytes).await;
    assert_eq!((r.status, err_code(&r)), (429, "rate_limited"));
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "Retry-After {retry}");
    // Another tenant has its own budget.
    assert_eq!(api.upload(&other, "s", "1.0.0", &bytes).await.status, 201);
    // Swaps have theirs.
    api.upload(&other, "logistic", "1.0.0", &plugin("logistic"))
        .await;
    let spec = SPEC.replace("standardize@1.0.0", "s@1.0.0");
    let pid = api
        .post("/v1/pipelines", &other, json!({ "spec": spec }))
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    let path = format!("/v1/pipelines/{pid}/stages/model/deploy");
    for _ in 0..2 {
        let r = api
            .post(&path, &other, json!({"plugin": "logistic@1.0.0"}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = api
        .post(&path, &other, json!({"plugin": "logistic@1.0.0"}))
        .await;
    assert_eq!((r.status, err_code(&r)), (429, "rate_limited"));
    assert!(r.headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_specs_are_validated() {
    let api = Api::new(ApiConfig::default(), false).await;
    let (_, key) = api.tenant("acme").await;
    let r = api
        .post("/v1/pipelines", &key, json!({ "spec": SPEC }))
        .await;
    assert_eq!(
        (r.status, err_code(&r)),
        (422, "unknown_plugin"),
        "{}",
        r.body
    );
    api.scoring_plugins(&key).await;
    let wrong = SPEC.replace(
        "plugin = \"logistic@1.0.0\"",
        "plugin = \"standardize@1.0.0\"",
    );
    let r = api
        .post("/v1/pipelines", &key, json!({ "spec": wrong }))
        .await;
    assert_eq!((r.status, err_code(&r)), (422, "wrong_kind"), "{}", r.body);
    let r = api
        .post(
            "/v1/pipelines",
            &key,
            json!({ "spec": "name = \"x\"\n[source]\ntopic = 3\n" }),
        )
        .await;
    assert_eq!((r.status, err_code(&r)), (422, "invalid_spec"));
    assert!(
        r.body["message"].as_str().unwrap().contains("line"),
        "{}",
        r.body
    );
    let r = api.post("/v1/pipelines", &key, json!({ "nope": 1 })).await;
    assert_eq!(r.status, 400);
    let r = api
        .post("/v1/pipelines", &key, json!({ "spec": SPEC }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().unwrap();
    assert_eq!(r.body["status"], "created");
    assert_eq!(r.body["source_topic"], "acme.events");
    assert_eq!(r.body["stages"][1]["plugin"], "logistic@1.0.0");
    let r = api
        .post("/v1/pipelines", &key, json!({ "spec": SPEC }))
        .await;
    assert_eq!(r.status, 409);
    let r = api.get("/v1/pipelines", &key).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    // Hot-swap actions need it running; deploy applies at the next start.
    let r = api
        .post(
            &format!("/v1/pipelines/{id}/stages/model/swap"),
            &key,
            json!({"plugin": "logistic"}),
        )
        .await;
    assert_eq!((r.status, err_code(&r)), (409, "conflict"));
    let r = api
        .post(
            &format!("/v1/pipelines/{id}/stages/model/teleport"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = api
        .post(
            &format!("/v1/pipelines/{id}/stages/nope/deploy"),
            &key,
            json!({"plugin": "logistic"}),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = api
        .post(
            &format!("/v1/pipelines/{id}/stages/model/deploy"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = api
        .post(
            &format!("/v1/pipelines/{id}/stages/model/deploy"),
            &key,
            json!({"plugin": "nope"}),
        )
        .await;
    assert_eq!((r.status, err_code(&r)), (422, "unknown_plugin"));
    let r = api
        .post(
            &format!("/v1/pipelines/{id}/stages/extractor/canary"),
            &key,
            json!({"plugin": "standardize"}),
        )
        .await;
    assert_eq!((r.status, err_code(&r)), (422, "model_only"));
    let r = api
        .get(&format!("/v1/pipelines/{id}/predictions?limit=0"), &key)
        .await;
    assert_eq!(r.status, 400);
    let r = api
        .get(
            &format!("/v1/pipelines/{id}/predictions?cursor=garbage"),
            &key,
        )
        .await;
    assert_eq!(
        (r.status, r.body["message"].as_str()),
        (400, Some("invalid cursor"))
    );
    let r = api
        .get(&format!("/v1/pipelines/{id}/predictions?from=abc"), &key)
        .await;
    assert_eq!(r.status, 400);
    let r = api.get(&format!("/v1/pipelines/{id}/windows"), &key).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!({"items": [], "next": null}))
    );
    let r = api.get(&format!("/v1/pipelines/{id}/metrics"), &key).await;
    assert_eq!((r.status, r.body.clone()), (200, json!([])));
    let r = api.get(&format!("/v1/pipelines/{id}/training"), &key).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (
            200,
            json!({"spec": null, "status": null, "decisions": [], "next": null})
        )
    );
    let r = api
        .get(&format!("/v1/pipelines/{id}/training?limit=0"), &key)
        .await;
    assert_eq!(r.status, 400);
    let r = api
        .call(
            "POST",
            &format!("/v1/pipelines/{id}/stop"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("stopped"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_see_or_touch_each_other() {
    let api = Api::new(ApiConfig::default(), false).await;
    let (_, a) = api.tenant("alpha").await;
    let (_, b) = api.tenant("beta").await;
    for k in [&a, &b] {
        api.upload(k, "standardize", "1.0.0", &plugin("standardize"))
            .await;
        assert_eq!(
            api.upload(k, "logistic", "1.0.0", &plugin("logistic"))
                .await
                .status,
            201
        );
    }
    // B has a plugin A does not have (by name and by sha256).
    let b_only = variant(&plugin("logistic"), "beta");
    let r = api.upload(&b, "secret-model", "1.0.0", &b_only).await;
    let b_plugin = r.body["id"].as_i64().unwrap();
    let b_sha = r.body["sha256"].as_str().unwrap().to_owned();
    let b_pipe = api
        .post("/v1/pipelines", &b, json!({"spec": SPEC}))
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    let a_pipe = api
        .post("/v1/pipelines", &a, json!({"spec": SPEC}))
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    // A cursor B legitimately holds, forged into existence by the server's signer.
    let b_tenant = api.get("/v1/whoami", &b).await.body["tenant_id"]
        .as_i64()
        .unwrap();
    let b_cursor = api.state.cursors.sign(&api::auth::CursorBody {
        t: b_tenant,
        p: b_pipe,
        k: "predictions".into(),
        po: Some((0, 10)),
        kw: None,
        pos: None,
    });
    let before_plugins = api.get("/v1/plugins", &b).await.body;
    let before_pipe = api.get(&format!("/v1/pipelines/{b_pipe}"), &b).await.body;
    let before_deps = api
        .get(&format!("/v1/pipelines/{b_pipe}/deployments"), &b)
        .await
        .body;

    let p = b_plugin;
    let q = b_pipe;
    let matrix: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/v1/plugins/{p}"), None),
        ("GET", format!("/v1/plugins/{p}/download"), None),
        ("GET", format!("/v1/plugins/{p}/logs"), None),
        ("DELETE", format!("/v1/plugins/{p}"), None),
        ("GET", format!("/v1/pipelines/{q}"), None),
        ("POST", format!("/v1/pipelines/{q}/start"), None),
        ("POST", format!("/v1/pipelines/{q}/stop"), None),
        ("GET", format!("/v1/pipelines/{q}/deployments"), None),
        ("GET", format!("/v1/pipelines/{q}/metrics"), None),
        ("GET", format!("/v1/pipelines/{q}/training"), None),
        ("GET", format!("/v1/pipelines/{q}/predictions"), None),
        ("GET", format!("/v1/pipelines/{q}/windows"), None),
        ("GET", format!("/v1/pipelines/{q}/gaps"), None),
        (
            "GET",
            format!("/v1/pipelines/{q}/predictions?cursor={b_cursor}"),
            None,
        ),
        (
            "POST",
            format!("/v1/pipelines/{q}/stages/model/deploy"),
            Some(json!({"plugin": "logistic@1.0.0"})),
        ),
        (
            "POST",
            format!("/v1/pipelines/{q}/stages/model/swap"),
            Some(json!({"plugin": "logistic@1.0.0"})),
        ),
        (
            "POST",
            format!("/v1/pipelines/{q}/stages/model/rollback"),
            Some(json!({})),
        ),
        (
            "POST",
            format!("/v1/pipelines/{q}/stages/model/canary"),
            Some(json!({"plugin": "logistic", "percent": 20})),
        ),
        (
            "POST",
            format!("/v1/pipelines/{q}/stages/model/shadow"),
            Some(json!({"plugin": "logistic"})),
        ),
        (
            "POST",
            format!("/v1/pipelines/{q}/stages/model/promote"),
            Some(json!({})),
        ),
        (
            "DELETE",
            format!("/v1/pipelines/{q}/stages/model/canary"),
            None,
        ),
        ("DELETE", format!("/v1/pipelines/{q}"), None),
    ];
    for (method, path, body) in &matrix {
        let r = api
            .call(
                method,
                path,
                Some(&a),
                body.as_ref().map(|b| b.to_string().into_bytes()),
            )
            .await;
        assert_eq!(
            (r.status, err_code(&r)),
            (404, "not_found"),
            "A: {method} {path}: {}",
            r.body
        );
    }
    // B's plugin, by sha256 or by name, into A's own pipeline: unknown to A.
    for reference in [
        format!("sha256:{b_sha}"),
        "secret-model".into(),
        "secret-model@1.0.0".into(),
    ] {
        let r = api
            .post(
                &format!("/v1/pipelines/{a_pipe}/stages/model/deploy"),
                &a,
                json!({"plugin": reference}),
            )
            .await;
        assert_eq!(
            (r.status, err_code(&r)),
            (422, "unknown_plugin"),
            "{reference}: {}",
            r.body
        );
    }
    // B's spec naming B's plugin cannot be created by A either.
    let spec = SPEC
        .replace("logistic@1.0.0", &format!("sha256:{b_sha}"))
        .replace("scores\"\n\n[source]", "stolen\"\n\n[source]");
    let r = api.post("/v1/pipelines", &a, json!({"spec": spec})).await;
    assert_eq!(
        (r.status, err_code(&r)),
        (422, "unknown_plugin"),
        "{}",
        r.body
    );
    // B's cursor on A's own pipeline.
    let r = api
        .get(
            &format!("/v1/pipelines/{a_pipe}/predictions?cursor={b_cursor}"),
            &a,
        )
        .await;
    assert_eq!(
        (r.status, r.body["message"].as_str()),
        (400, Some("invalid cursor"))
    );
    // Listings show only one's own.
    let list = api.get("/v1/plugins", &a).await.body;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|x| x["sha256"] != b_sha.as_str())
    );
    assert_eq!(
        api.get("/v1/pipelines", &a)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // B's data is unchanged.
    assert_eq!(api.get("/v1/plugins", &b).await.body, before_plugins);
    assert_eq!(
        api.get(&format!("/v1/pipelines/{b_pipe}"), &b).await.body,
        before_pipe
    );
    assert_eq!(
        api.get(&format!("/v1/pipelines/{b_pipe}/deployments"), &b)
            .await
            .body,
        before_deps
    );
    let r = api
        .get(&format!("/v1/plugins/{b_plugin}/download"), &b)
        .await;
    assert_eq!(r.raw, b_only);
    // And B still uses its own cursor.
    let r = api
        .get(
            &format!("/v1/pipelines/{b_pipe}/predictions?cursor={b_cursor}"),
            &b,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_routes() {
    let api = Api::new(ApiConfig::default(), false).await;
    let r = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    let doc = r.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), p.clone()))
        })
        .collect();
    // Every route the router serves is documented, with its ids as templates...
    let template = |path: &str| -> String {
        let path = path.split('?').next().unwrap();
        let parts: Vec<&str> = path.split('/').collect();
        let mut out = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            out.push(match (i, *part) {
                (_, "1")
                    if parts[i - 1] == "tenants"
                        || parts[i - 1] == "plugins"
                        || parts[i - 1] == "pipelines" =>
                {
                    "{id}".to_owned()
                }
                (_, "1") if parts[i - 1] == "keys" => "{key_id}".to_owned(),
                (_, "model") => "{stage}".to_owned(),
                (_, "swap") => "{action}".to_owned(),
                (_, "canary") => "{action}".to_owned(),
                (_, p) => p.to_owned(),
            });
        }
        out.join("/")
    };
    let mut served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), template(p)))
        .collect();
    for open in ["/healthz", "/readyz", "/openapi.json"] {
        served.insert(("GET".into(), open.into()));
    }
    assert_eq!(documented, served);
    // ...and every documented operation answers on the router (never "no such route").
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", "1")
            .replace("{key_id}", "1")
            .replace("{stage}", "model")
            .replace(
                "{action}",
                if method == "DELETE" { "canary" } else { "swap" },
            );
        let r = api.call(method, &concrete, Some(ADMIN), None).await;
        assert_ne!(r.body["message"], "no such route", "{method} {path}");
        assert_ne!(r.status, 405, "{method} {path}");
        assert!(r.status < 500, "{method} {path}: {}", r.body);
    }
    // Errors are described with the shared schema.
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

/// Waits until `f` returns `Some`, or panics after `secs`.
pub(crate) async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every prediction of a pipeline through the paged API.
pub(crate) async fn all_predictions(api: &Api, key: &str, pipe: i64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/pipelines/{pipe}/predictions?limit=1000&cursor={c}"),
            None => format!("/v1/pipelines/{pipe}/predictions?limit=1000"),
        };
        let r = api.get(&path, key).await;
        assert_eq!(r.status, 200, "{}", r.body);
        out.extend(r.body["items"].as_array().unwrap().iter().cloned());
        match r.body["next"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pipeline_swap_rollback_canary_shadow_promote() {
    let api = Api::new(ApiConfig::default(), true).await;
    let (_, key) = api.tenant("acme").await;
    api.upload(&key, "standardize", "1.0.0", &plugin("standardize"))
        .await;
    let v1 = api
        .upload(&key, "logistic", "1.0.0", &plugin("logistic"))
        .await
        .body;
    let v2 = api
        .upload(
            &key,
            "logistic",
            "2.0.0",
            &variant(&plugin("logistic"), "v2"),
        )
        .await
        .body;
    let _v3 = api
        .upload(
            &key,
            "logistic",
            "3.0.0",
            &variant(&plugin("logistic"), "v3"),
        )
        .await
        .body;
    assert_ne!(v1["sha256"], v2["sha256"]);
    let pipe = api
        .post("/v1/pipelines", &key, json!({"spec": SPEC}))
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    for topic in [
        "acme.events",
        "acme.scores",
        "acme.dead",
        "acme.scores.shadow",
    ] {
        api.broker.as_ref().unwrap().create_topic(topic, 1).unwrap();
    }
    let r = api
        .call(
            "POST",
            &format!("/v1/pipelines/{pipe}/start"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("running")),
        "{}",
        r.body
    );
    let r = api
        .call(
            "POST",
            &format!("/v1/pipelines/{pipe}/start"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.status, 409);

    let mut producer = Producer::new(&api.bootstrap()).unwrap();
    let events: Vec<_> = weir_workload::Generator::new(12_000, 7).collect();
    let mut sent = 0usize;
    let mut send = |n: usize, producer: &mut Producer| {
        for e in &events[sent..sent + n] {
            producer
                .send(
                    "acme.events",
                    &e.key,
                    weir_workload::to_json_line(e).as_bytes(),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        sent += n;
        sent
    };
    let stage = |action: &str| format!("/v1/pipelines/{pipe}/stages/model/{action}");
    // Results counted before a restart (the worker's counters start again at 0).
    let base = std::cell::Cell::new(0usize);
    let done = |n: usize| {
        let api = &api;
        let key = key.clone();
        let want = (n - base.get()) as u64;
        move || {
            let key = key.clone();
            async move {
                let r = api.get(&format!("/v1/pipelines/{pipe}"), &key).await;
                let c = r.body["counters"]["results_out"].as_u64().unwrap_or(0);
                (c >= want).then_some(())
            }
        }
    };
    // Phase 1: v1.
    let n = send(2000, &mut producer);
    wait_for(60, "phase 1", done(n)).await;
    // Phase 2: swap to v2.
    let r = api
        .post(&stage("swap"), &key, json!({"plugin": "logistic@2.0.0"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ver2 = r.body["version"].as_str().unwrap().to_owned();
    let ver1 = r.body["previous"].as_str().unwrap().to_owned();
    let n = send(2000, &mut producer);
    wait_for(60, "phase 2", done(n)).await;
    // Phase 3: roll back to v1.
    let r = api.post(&stage("rollback"), &key, json!({})).await;
    assert_eq!(
        (r.status, r.body["version"].as_str()),
        (200, Some(&*ver1)),
        "{}",
        r.body
    );
    let n = send(2000, &mut producer);
    wait_for(60, "phase 3", done(n)).await;
    // Phase 4: canary v3 at 20%.
    let r = api
        .post(
            &stage("canary"),
            &key,
            json!({"plugin": "logistic@3.0.0", "percent": 20}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ver3 = r.body["version"].as_str().unwrap().to_owned();
    let n = send(2000, &mut producer);
    wait_for(60, "phase 4", done(n)).await;
    // Labels arrive with the events (the stream drifts at event 6,000): accuracy per
    // version and role, side by side. v2 served phase 2, before the drift; the canary (v3)
    // scored its share of phase 4, after it, where the fixed model is mostly wrong.
    let m = api
        .get(&format!("/v1/pipelines/{pipe}/metrics"), &key)
        .await
        .body;
    let before = fig(&m, "serving", &ver2);
    assert!(before["accuracy"].as_f64().unwrap() > 0.7, "{before}");
    assert!(before["auc"].as_f64().unwrap() > 0.8, "{before}");
    let after = fig(&m, "canary", &ver3);
    assert!(after["accuracy"].as_f64().unwrap() < 0.45, "{after}");
    assert!(after["auc_recent"].as_f64().unwrap() < 0.5, "{after}");
    assert_eq!(
        after["labelled"], after["rows"],
        "every row was labelled: {after}"
    );
    // A restart keeps the canary, and resumes where the pipeline stopped.
    let r = api
        .call(
            "POST",
            &format!("/v1/pipelines/{pipe}/stop"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    base.set(n);
    let r = api
        .call(
            "POST",
            &format!("/v1/pipelines/{pipe}/start"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["canary"]["percent"], 20.0, "{}", r.body);
    assert_eq!(r.body["canary"]["version"], ver3.as_str());
    // Phase 5: shadow v2 too, then promote the canary.
    let r = api
        .post(&stage("shadow"), &key, json!({"plugin": "logistic@2.0.0"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let n = send(2000, &mut producer);
    wait_for(60, "phase 5", done(n)).await;
    let r = api.get(&format!("/v1/pipelines/{pipe}"), &key).await;
    assert_eq!(r.body["canary"]["percent"], 20.0);
    assert_eq!(r.body["shadow"]["plugin"], "logistic@2.0.0");
    let r = api.post(&stage("promote"), &key, json!({})).await;
    assert_eq!(
        (r.status, err_code(&r)),
        (400, "bad_request"),
        "both run: say which"
    );
    let r = api
        .post(&stage("promote"), &key, json!({"from": "canary"}))
        .await;
    assert_eq!(
        (r.status, r.body["version"].as_str()),
        (200, Some(&*ver3)),
        "{}",
        r.body
    );
    let m = api
        .get(&format!("/v1/pipelines/{pipe}/metrics"), &key)
        .await
        .body;
    let roles: BTreeSet<(String, String)> = m
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["stage"] == "model")
        .map(|x| {
            (
                x["role"].as_str().unwrap().to_owned(),
                x["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        roles.contains(&("shadow".into(), ver2.clone())),
        "{roles:?}"
    );
    assert!(
        roles.contains(&("canary".into(), ver3.clone())),
        "{roles:?}"
    );
    // After the drift the fixed model is mostly wrong: the shadow shows it too.
    let shadow = fig(&m, "shadow", &ver2);
    assert!(shadow["accuracy"].as_f64().unwrap() < 0.45, "{shadow}");
    assert!(
        shadow["accuracy_recent"].as_f64().unwrap() < 0.45,
        "{shadow}"
    );
    assert_eq!(shadow["labelled"], shadow["rows"], "{shadow}");
    let r = api.call("DELETE", &stage("shadow"), Some(&key), None).await;
    assert_eq!(r.status, 204);
    let r = api.call("DELETE", &stage("shadow"), Some(&key), None).await;
    assert_eq!(r.status, 404);
    // Phase 6: v3 serves everything.
    let n = send(2000, &mut producer);
    wait_for(60, "phase 6", done(n)).await;
    // Prometheus text has the pipeline's series, labelled by tenant, pipeline and version.
    let r = api.call("GET", "/metrics", Some(&key), None).await;
    let text = String::from_utf8(r.raw).unwrap();
    assert!(
        text.contains("weir_events_in_total{tenant=\"acme\",pipeline=\"scores\"}"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "role=\"shadow\",version=\"{ver2}\",plugin=\"logistic@2.0.0\""
        )),
        "{text}"
    );
    assert!(
        text.contains("weir_stage_latency_seconds_bucket{"),
        "{text}"
    );
    let r = api
        .call(
            "POST",
            &format!("/v1/pipelines/{pipe}/stop"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("stopped"))
    );

    // Every event has exactly one stored prediction, made by the version of its phase.
    let preds = all_predictions(&api, &key, pipe).await;
    let mut seen: BTreeMap<(i64, i64), Value> = BTreeMap::new();
    for p in &preds {
        let id = (
            p["partition"].as_i64().unwrap(),
            p["offset"].as_i64().unwrap(),
        );
        assert!(seen.insert(id, p.clone()).is_none(), "duplicate {id:?}");
    }
    assert_eq!(seen.len(), events.len(), "every event has a prediction");
    let mut versions_by_phase: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new(); 6];
    let mut key_versions_in_canary: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // The topic has 1 partition by default (auto-created), so offset = send order.
    for ((_, offset), p) in &seen {
        let phase = (*offset as usize) / 2000;
        let v = p["model_version"].as_str().unwrap().to_owned();
        assert_eq!(
            p["output"]["model_version"],
            v.as_str(),
            "the output names its version"
        );
        *versions_by_phase[phase].entry(v.clone()).or_default() += 1;
        if phase == 3 || phase == 4 {
            key_versions_in_canary
                .entry(p["key"].as_str().unwrap().to_owned())
                .or_default()
                .insert(v);
        }
    }
    assert_eq!(versions_by_phase[0].keys().collect::<Vec<_>>(), [&ver1]);
    assert_eq!(versions_by_phase[1].keys().collect::<Vec<_>>(), [&ver2]);
    assert_eq!(versions_by_phase[2].keys().collect::<Vec<_>>(), [&ver1]);
    assert_eq!(versions_by_phase[5].keys().collect::<Vec<_>>(), [&ver3]);
    for phase in [3, 4] {
        let on_canary = versions_by_phase[phase].get(&ver3).copied().unwrap_or(0) as f64 / 2000.0;
        assert!(
            (0.10..0.30).contains(&on_canary),
            "phase {phase}: canary share {on_canary}"
        );
    }
    assert!(
        key_versions_in_canary.values().all(|v| v.len() == 1),
        "a key always sees one version during a canary"
    );
    // The deployment history names every action, and where each version took effect.
    let deps = api
        .get(&format!("/v1/pipelines/{pipe}/deployments"), &key)
        .await
        .body;
    let actions: Vec<&str> = deps
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["partition"].is_null())
        .map(|d| d["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "api/swap",
            "api/rollback",
            "api/canary 20%",
            "api/shadow",
            "api/promote canary",
            "api/end-shadow"
        ]
    );
    let mut took_effect: Vec<(String, i64)> = deps
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["stage"] == "model" && !d["partition"].is_null())
        .map(|d| {
            (
                d["version"].as_str().unwrap().to_owned(),
                d["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    // The restart re-records the serving version where the new worker started (8000).
    assert!(
        took_effect.contains(&(ver1.clone(), 8000)),
        "{took_effect:?}"
    );
    took_effect.dedup_by(|b, a| a.0 == b.0);
    assert_eq!(
        took_effect,
        [
            (ver1.clone(), 0),
            (ver2.clone(), 2000),
            (ver1.clone(), 4000),
            (ver3.clone(), 10_000)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_logs_and_a_failing_shadow() {
    let api = Api::new(ApiConfig::default(), true).await;
    let (_, key) = api.tenant("acme").await;
    api.scoring_plugins(&key).await;
    let bomb = weir_guests::read(weir_guests::fixtures::MEMBOMB).unwrap();
    let r = api.upload(&key, "membomb", "1.0.0", &bomb).await;
    assert_eq!(r.status, 201, "{}", r.body);
    for topic in [
        "acme.events",
        "acme.scores",
        "acme.dead",
        "acme.scores.shadow",
    ] {
        api.broker.as_ref().unwrap().create_topic(topic, 1).unwrap();
    }
    let pipe = api
        .post("/v1/pipelines", &key, json!({"spec": SPEC}))
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    let r = api
        .call(
            "POST",
            &format!("/v1/pipelines/{pipe}/start"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A shadow that allocates until the memory cap stops it, on every call: the real output must not notice.
    let r = api
        .post(
            &format!("/v1/pipelines/{pipe}/stages/model/shadow"),
            &key,
            json!({"plugin": "membomb"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut producer = Producer::new(&api.bootstrap()).unwrap();
    let events: Vec<_> = weir_workload::Generator::new(250, 3).collect();
    for e in &events[..250] {
        producer
            .send(
                "acme.events",
                &e.key,
                weir_workload::to_json_line(e).as_bytes(),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    wait_for(60, "250 results", || async {
        (counters(&api, &key, pipe).await["results_out"].as_u64() >= Some(250)).then_some(())
    })
    .await;
    assert_eq!(
        counters(&api, &key, pipe).await["dead"],
        0,
        "a shadow's failure is not a dead letter"
    );
    let m = api
        .get(&format!("/v1/pipelines/{pipe}/metrics"), &key)
        .await
        .body;
    let shadow = m
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["role"] == "shadow")
        .unwrap()
        .clone();
    assert!(shadow["errors"].as_u64().unwrap() > 0, "{m}");
    // The logistic plugin logs its configuration when it starts: captured per plugin.
    let list = api.get("/v1/plugins", &key).await.body;
    let id_of = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    let logs = api
        .get(&format!("/v1/plugins/{}/logs", id_of("logistic")), &key)
        .await
        .body;
    let lines = logs.as_array().unwrap();
    assert_eq!(lines.len(), 1, "{logs}");
    assert_eq!(
        lines[0]["message"],
        "logistic: 9 weights, learning rate 0.01 (used when trained)"
    );
    assert_eq!(lines[0]["level"], "info");
    assert_eq!(
        (lines[0]["stage"].as_str(), lines[0]["role"].as_str()),
        (Some("model"), Some("serving"))
    );
    assert_eq!(lines[0]["pipeline_id"], pipe);
    // standardize never logs.
    let logs = api
        .get(&format!("/v1/plugins/{}/logs", id_of("standardize")), &key)
        .await
        .body;
    assert_eq!(logs, json!([]));
    api.call(
        "POST",
        &format!("/v1/pipelines/{pipe}/stop"),
        Some(&key),
        None,
    )
    .await;
}

/// The figures of a model version in a role, from `/metrics` of a pipeline.
fn fig(m: &Value, role: &str, version: &str) -> Value {
    m.as_array()
        .unwrap()
        .iter()
        .find(|x| x["stage"] == "model" && x["role"] == role && x["version"] == version)
        .cloned()
        .unwrap_or_else(|| panic!("no {role} {version} in {m}"))
}

async fn counters(api: &Api, key: &str, pipe: i64) -> Value {
    api.get(&format!("/v1/pipelines/{pipe}"), key).await.body["counters"].clone()
}

/// A pipeline with a `[training]` section, run through the API: the model retrains in the
/// host, decisions show at `/training` and in `/metrics`, and after a stop and a start the
/// last promoted model serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_pipeline_retrains_and_resumes_over_the_api() {
    let api = Api::new(ApiConfig::default(), true).await;
    let (_, key) = api.tenant("acme").await;
    api.scoring_plugins(&key).await;
    let spec = weir_server::job3::spec_text(weir_server::job3::Variant::Retraining);
    let r = api.post("/v1/pipelines", &key, json!({"spec": spec})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let pipe = r.body["id"].as_i64().unwrap();
    for topic in ["acme.events", "acme.scores", "acme.dead-letters"] {
        api.broker.as_ref().unwrap().create_topic(topic, 1).unwrap();
    }
    async fn start(api: &Api, key: &str, pipe: i64) {
        let r = api
            .call(
                "POST",
                &format!("/v1/pipelines/{pipe}/start"),
                Some(key),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    start(&api, &key, pipe).await;
    let events: Vec<_> = weir_workload::Generator::new(16_000, 3).collect();
    let mut producer = Producer::new(&api.bootstrap()).unwrap();
    for e in &events {
        producer
            .send(
                "acme.events",
                &e.key,
                weir_workload::to_json_line(e).as_bytes(),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let training = wait_for(90, "training decisions", || {
        let (api, key) = (&api, key.clone());
        async move {
            let r = api
                .get(&format!("/v1/pipelines/{pipe}/training?limit=1000"), &key)
                .await;
            let done = r.body["status"]["labelled_rows"].as_u64() == Some(16_000);
            let promoted = r.body["decisions"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x["outcome"] == "promoted"));
            (r.status == 200 && done && promoted).then_some(r.body)
        }
    })
    .await;
    assert_eq!(training["spec"]["window_rows"], 20000);
    assert!(training["status"]["promotions"].as_u64().unwrap() >= 2);
    assert!(training["status"]["drifts"].as_u64().unwrap() >= 1);
    let decisions = training["decisions"].as_array().unwrap();
    let latest_promoted = decisions
        .iter()
        .find(|d| d["outcome"] == "promoted")
        .unwrap();
    assert!(latest_promoted["snapshot_id"].as_i64().is_some());
    assert!(
        latest_promoted["detail"]["window"]["rows"]
            .as_u64()
            .unwrap()
            >= 50
    );
    // Paging: ids descend, and `before` continues below the page.
    let r = api
        .get(&format!("/v1/pipelines/{pipe}/training?limit=2"), &key)
        .await;
    let page: Vec<i64> = r.body["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert!(page.len() == 2 && page[0] > page[1]);
    let next = r.body["next"].as_i64().unwrap();
    let r = api
        .get(
            &format!("/v1/pipelines/{pipe}/training?limit=2&before={next}"),
            &key,
        )
        .await;
    assert!(r.body["decisions"][0]["id"].as_i64().unwrap() < next);
    let text = String::from_utf8_lossy(&api.call("GET", "/metrics", Some(&key), None).await.raw)
        .into_owned();
    assert!(
        text.contains(
            "weir_training_promotions_total{tenant=\"acme\",pipeline=\"job3-retraining\"}"
        ),
        "{text}"
    );
    // The stage serves a trained version, named after its plugin.
    let r = api.get(&format!("/v1/pipelines/{pipe}"), &key).await;
    let model = r.body["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "model")
        .unwrap()
        .clone();
    assert_eq!(model["plugin"], "logistic@1.0.0");
    assert!(model["history"].as_array().unwrap().len() >= 3);
    // Stop, start: the last promoted model serves again.
    let r = api
        .call(
            "POST",
            &format!("/v1/pipelines/{pipe}/stop"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let last = api
        .get(&format!("/v1/pipelines/{pipe}/training?limit=1000"), &key)
        .await
        .body["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["outcome"] == "promoted")
        .unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    start(&api, &key, pipe).await;
    let resumed = wait_for(30, "the resumed model", || {
        let (api, key, last) = (&api, key.clone(), last.clone());
        async move {
            let r = api.get(&format!("/v1/pipelines/{pipe}"), &key).await;
            r.body["stages"]
                .as_array()?
                .iter()
                .find(|s| s["stage"] == "model" && s["version"] == last.as_str())
                .cloned()
        }
    })
    .await;
    assert_eq!(resumed["plugin"], "logistic@1.0.0");
}
