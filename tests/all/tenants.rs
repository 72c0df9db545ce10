//! What tenants may have and use (issue 15, rows 6 and 7): quotas on pipelines, running
//! pipelines, plugins and plugin bytes, set by the operator, visible to the tenant, named
//! when reached, and held under concurrent calls; and the live stream of a pipeline's
//! committed predictions (server-sent events), resumable where it stopped.

use crate::api::{ADMIN, Api, SPEC, all_predictions, err_code, plugin, variant, wait_for};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_server::api::quotas::Quotas;
use weir_server::api::{self, ApiConfig};

/// Asserts a 403 `quota_exceeded` whose message starts with `prefix`.
fn quota_reached(status: u16, body: &Value, prefix: &str) {
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("quota_exceeded")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap_or("");
    assert!(message.starts_with(prefix), "{body}");
}

fn spec_named(name: &str) -> String {
    SPEC.replace("name = \"scores\"", &format!("name = \"{name}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_the_operators_and_named_when_reached() {
    let config = ApiConfig {
        quotas: Quotas {
            pipelines: 3,
            running_pipelines: 1,
            plugins: 3,
            plugin_bytes: 1 << 30,
        },
        ..ApiConfig::default()
    };
    let api = Api::new(config, true).await;
    let (id, key) = api.tenant("acme").await;
    let (_, other) = api.tenant("other").await;
    api.scoring_plugins(&key).await;
    let third = variant(&plugin("logistic"), "third");
    assert_eq!(
        api.upload(&key, "logistic", "1.0.1", &third).await.status,
        201
    );
    // The fourth plugin version is over the quota of 3: 403, naming it.
    let fourth = variant(&plugin("logistic"), "fourth");
    let r = api.upload(&key, "logistic", "1.0.2", &fourth).await;
    quota_reached(r.status, &r.body, "quota `plugins` reached");
    assert_eq!(
        r.body["message"],
        "quota `plugins` reached: 3 plugin versions are stored; the quota is 3 (an admin can \
         change it: PUT /v1/tenants/{id}/limits)"
    );
    // Another tenant's use is its own.
    assert_eq!(
        api.upload(&other, "logistic", "1.0.2", &fourth)
            .await
            .status,
        201
    );

    // Concurrent creates: exactly the quota's worth succeed.
    let creates: Vec<_> = (0..6)
        .map(|i| {
            let (state, key) = (api.state.clone(), key.clone());
            tokio::spawn(async move {
                let body = json!({ "spec": spec_named(&format!("p{i}")) }).to_string();
                let r = warp::test::request()
                    .method("POST")
                    .path("/v1/pipelines")
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-length", body.len().to_string())
                    .body(body)
                    .reply(&api::routes(state))
                    .await;
                let v: Value = serde_json::from_slice(r.body()).unwrap_or(Value::Null);
                (r.status().as_u16(), v)
            })
        })
        .collect();
    let mut made = Vec::new();
    let mut refused = 0;
    for c in creates {
        let (status, body) = c.await.unwrap();
        match status {
            201 => made.push(body["id"].as_i64().unwrap()),
            403 => {
                quota_reached(
                    status,
                    &body,
                    "quota `pipelines` reached: 3 pipelines exist; the quota is 3",
                );
                refused += 1;
            }
            s => panic!("{s}: {body}"),
        }
    }
    assert_eq!((made.len(), refused), (3, 3));

    // One running pipeline: the second start is 403 naming `running_pipelines`.
    let start = |p: i64| format!("/v1/pipelines/{p}/start");
    assert_eq!(api.post(&start(made[0]), &key, json!({})).await.status, 200);
    let r = api.post(&start(made[1]), &key, json!({})).await;
    quota_reached(
        r.status,
        &r.body,
        "quota `running_pipelines` reached: 1 pipelines are running",
    );

    // The tenant sees its quotas and its use of them.
    let limits = format!("/v1/tenants/{id}/limits");
    let r = api.get(&limits, &key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["quotas"],
        json!({"pipelines": 3, "running_pipelines": 1, "plugins": 3, "plugin_bytes": 1u64 << 30})
    );
    let bytes = (plugin("standardize").len() + plugin("logistic").len() + third.len()) as u64;
    assert_eq!(
        r.body["usage"],
        json!({"pipelines": 3, "running_pipelines": 1, "plugins": 3, "plugin_bytes": bytes})
    );
    // The tenant cannot raise them; the admin can, per tenant, and they hold at once.
    let put = |k: String, body: Value| {
        let limits = limits.clone();
        let api = &api;
        async move {
            api.call(
                "PUT",
                &limits,
                Some(&k),
                Some(body.to_string().into_bytes()),
            )
            .await
        }
    };
    let r = put(key.clone(), json!({"quotas": {"running_pipelines": 10}})).await;
    assert_eq!((r.status, err_code(&r)), (403, "admin_only"));
    let r = put(
        ADMIN.to_owned(),
        json!({"quotas": {"running_pipelines": 2, "plugin_bytes": bytes + 10}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["quotas"]["running_pipelines"], 2);
    assert_eq!(r.body["overrides"]["quotas"]["running_pipelines"], 2);
    assert_eq!(api.post(&start(made[1]), &key, json!({})).await.status, 200);
    let r = put(
        ADMIN.to_owned(),
        json!({"quotas": {"plugins": 10, "plugin_bytes": bytes + 10}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api.upload(&key, "logistic", "1.0.2", &fourth).await;
    quota_reached(
        r.status,
        &r.body,
        &format!(
            "quota `plugin_bytes` reached: {bytes} bytes of plugins are stored and this adds {}; the quota is {}",
            fourth.len(),
            bytes + 10
        ),
    );
    let r = put(ADMIN.to_owned(), json!({"quotas": {"pipelnes": 1}})).await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `pipelnes`"),
        "{}",
        r.body
    );
    // Stopping frees a running slot.
    for p in &made[..2] {
        let r = api
            .post(&format!("/v1/pipelines/{p}/stop"), &key, json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(
        api.get(&limits, &key).await.body["usage"]["running_pipelines"],
        0
    );
}

/// A minimal SSE client over a real connection: the response head, then the chunked body
/// decoded into events (`field: value` lines, separated by a blank line).
struct Sse {
    conn: TcpStream,
    buf: Vec<u8>,
    body: Vec<u8>,
    head: Option<String>,
}

impl Sse {
    async fn open(addr: std::net::SocketAddr, path: &str, key: &str, last_id: Option<&str>) -> Sse {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n");
        if let Some(id) = last_id {
            req.push_str(&format!("last-event-id: {id}\r\n"));
        }
        req.push_str("\r\n");
        conn.write_all(req.as_bytes()).await.unwrap();
        Sse {
            conn,
            buf: Vec::new(),
            body: Vec::new(),
            head: None,
        }
    }

    /// The response head (status line and headers).
    async fn head(&mut self) -> String {
        while self.head.is_none() {
            self.fill().await;
        }
        self.head.clone().unwrap()
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(60), self.conn.read(&mut chunk))
            .await
            .expect("the stream went quiet for 60 s")
            .unwrap();
        assert!(n > 0, "the server closed the stream");
        self.buf.extend_from_slice(&chunk[..n]);
        if self.head.is_none()
            && let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n")
        {
            self.head = Some(String::from_utf8_lossy(&self.buf[..i]).into_owned());
            self.buf.drain(..i + 4);
        }
        if self.head.is_some() {
            // Chunked transfer coding: `<hex size>\r\n<data>\r\n`.
            while let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let size = usize::from_str_radix(std::str::from_utf8(&self.buf[..i]).unwrap(), 16)
                    .unwrap();
                if self.buf.len() < i + 2 + size + 2 {
                    break;
                }
                self.body.extend_from_slice(&self.buf[i + 2..i + 2 + size]);
                self.buf.drain(..i + 2 + size + 2);
            }
        }
    }

    /// The next event's fields (comments, such as keep-alives, skipped).
    async fn next(&mut self) -> Vec<(String, String)> {
        loop {
            if let Some(i) = self.body.windows(2).position(|w| w == b"\n\n") {
                let text = String::from_utf8(self.body.drain(..i + 2).collect()).unwrap();
                let fields: Vec<(String, String)> = text
                    .lines()
                    .filter(|l| !l.is_empty() && !l.starts_with(':'))
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.to_owned(), v.trim_start().to_owned()))
                    .collect();
                if !fields.is_empty() {
                    return fields;
                }
                continue;
            }
            self.fill().await;
        }
    }

    /// Reads events until `n` predictions arrived; returns their (partition, offset) and
    /// the last id seen.
    async fn predictions(&mut self, n: usize) -> (Vec<(i64, i64)>, Option<String>) {
        let (mut seen, mut last_id) = (Vec::new(), None);
        while seen.len() < n {
            let e = self.next().await;
            let get = |k: &str| e.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
            assert_eq!(get("event").as_deref(), Some("prediction"), "{e:?}");
            let v: Value = serde_json::from_str(&get("data").unwrap()).unwrap();
            seen.push((
                v["partition"].as_i64().unwrap(),
                v["offset"].as_i64().unwrap(),
            ));
            if let Some(id) = get("id") {
                last_id = Some(id);
            }
        }
        (seen, last_id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_predictions_stream_live_and_resume_where_they_stopped() {
    let api = Api::new(ApiConfig::default(), true).await;
    let (_, key) = api.tenant("acme").await;
    let (_, other) = api.tenant("other").await;
    api.scoring_plugins(&key).await;
    let spec = SPEC.replace("topic = \"events\"", "topic = \"events\"\npartitions = 3");
    let r = api
        .post("/v1/pipelines", &key, json!({ "spec": spec }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().unwrap();
    assert_eq!(
        api.post(&format!("/v1/pipelines/{id}/start"), &key, json!({}))
            .await
            .status,
        200
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(api.state.clone(), listener, async move {
        let _ = stopped.await;
    }));
    let path = format!("/v1/pipelines/{id}/predictions/stream");
    // Tenancy and cursors as in the rest of the API.
    let mut s = Sse::open(addr, &path, &other, None).await;
    assert!(s.head().await.starts_with("HTTP/1.1 404"));
    let mut s = Sse::open(addr, &path, &key, Some("forged")).await;
    assert!(s.head().await.starts_with("HTTP/1.1 400"));

    let events = format!("/v1/pipelines/{id}/events");
    let send = |from: u64, n: u64| {
        let lines: String = weir_workload::Generator::new(from + n, 5)
            .skip(from as usize)
            .map(|e| weir_workload::to_json_line(&e) + "\n")
            .collect();
        let (api, events, key) = (&api, &events, &key);
        async move {
            api.call("POST", events, Some(key), Some(lines.into_bytes()))
                .await
        }
    };
    // Opened before any prediction exists: it sends each one as its checkpoint commits.
    let mut s = Sse::open(addr, &path, &key, None).await;
    let head = s.head().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let r = send(0, 300).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (first, id1) = s.predictions(300).await;
    let id1 = id1.expect("an event id to resume from");
    drop(s);
    // More events while no one listens; the stream resumes after the last id it sent.
    let r = send(300, 200).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut s = Sse::open(addr, &path, &key, Some(&id1)).await;
    assert!(s.head().await.starts_with("HTTP/1.1 200"));
    let (second, _) = s.predictions(200).await;
    let all: BTreeSet<(i64, i64)> = first.iter().chain(&second).copied().collect();
    assert_eq!(all.len(), 500, "a prediction was sent twice");
    let stored: BTreeSet<(i64, i64)> = wait_for(30, "500 stored predictions", || async {
        let v = all_predictions(&api, &key, id).await;
        (v.len() == 500).then_some(v)
    })
    .await
    .iter()
    .map(|v| {
        (
            v["partition"].as_i64().unwrap(),
            v["offset"].as_i64().unwrap(),
        )
    })
    .collect();
    assert_eq!(all, stored);
    assert_eq!(
        first.iter().map(|p| p.0).collect::<BTreeSet<_>>().len(),
        3,
        "every partition streams"
    );
    // `from=now` on an idle pipeline sends nothing old: the next event is the next sent.
    let mut s = Sse::open(addr, &format!("{path}?from=now"), &key, None).await;
    assert!(s.head().await.starts_with("HTTP/1.1 200"));
    assert_eq!(send(500, 1).await.status, 200);
    let (next, _) = s.predictions(1).await;
    assert!(!all.contains(&next[0]), "{next:?} was sent before");
    let _ = stop.send(());
    server.await.unwrap();
}
