//! weir-store on both backends: every test runs once on a SQLite temp file and once on a fresh
//! MariaDB/MySQL database (`mysql://root@127.0.0.1:3306`, or `WEIR_TEST_MYSQL_URL`), which is
//! dropped at the end, pass or fail.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use weir_store::entity::keyed_state;
use weir_store::sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait, Statement};
use weir_store::{
    CommitBatch, NewDeployment, NewGap, NewSnapshot, PartitionCommit, Prediction, SourceIdentity,
    StateChange, StateEntry, Store, StoreError, WindowResult,
};

const DEFAULT_MYSQL: &str = "mysql://root@127.0.0.1:3306";

enum Backend {
    Sqlite(PathBuf),
    Mysql { server: String, name: String },
}

struct TestDb {
    url: String,
    backend: Backend,
}

/// `weir_t_<pid>_<tag>_<n>_<nanos>`: unique per test and run, and a valid MySQL name.
fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "weir_t_{}_{tag}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestDb {
    fn sqlite(tag: &str) -> TestDb {
        let path = std::env::temp_dir().join(format!("{}.db", unique_name(tag)));
        TestDb {
            url: format!("sqlite://{}", path.display()),
            backend: Backend::Sqlite(path),
        }
    }

    async fn mysql(tag: &str) -> TestDb {
        let server = std::env::var("WEIR_TEST_MYSQL_URL").unwrap_or_else(|_| DEFAULT_MYSQL.into());
        let name = unique_name(tag);
        let url = weir_store::create_mysql_database(&server, &name)
            .await
            .unwrap_or_else(|e| panic!("MariaDB at {server} is needed for the store tests: {e}"));
        TestDb {
            url,
            backend: Backend::Mysql { server, name },
        }
    }

    async fn cleanup(self) {
        match self.backend {
            Backend::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
            Backend::Mysql { server, name } => {
                weir_store::drop_mysql_database(&server, &name)
                    .await
                    .unwrap();
            }
        }
    }
}

/// Runs `body(url)` on SQLite, then on MySQL; cleans each database up even if the body panics.
async fn on_both<F, Fut>(tag: &str, body: F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    for db in [TestDb::sqlite(tag), TestDb::mysql(tag).await] {
        let label = match db.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Mysql { .. } => "mysql",
        };
        let result = tokio::spawn(body(db.url.clone())).await;
        db.cleanup().await;
        if let Err(e) = result {
            eprintln!("store test `{tag}` failed on {label}");
            match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("{label}: {e}"),
            }
        }
    }
}

fn prediction(partition: i32, offset: i64, score: Option<f64>) -> Prediction {
    Prediction {
        partition,
        offset,
        key: format!("user-{}", offset % 3),
        ts: 1_000 + offset,
        score,
        output: format!(r#"{{"p":{},"offset":{offset}}}"#, score.unwrap_or(-1.0)),
        model_version: "logistic@1".into(),
        extractor_version: "features@2".into(),
    }
}

fn window(key: &str, start: i64, output: &str, version: &str) -> WindowResult {
    WindowResult {
        key: key.into(),
        window_start: start,
        window_end: start + 60_000,
        partition: 0,
        output: output.into(),
        version: version.into(),
    }
}

fn set(namespace: &str, key: &str, value: &[u8]) -> StateChange {
    StateChange {
        namespace: namespace.into(),
        key: key.into(),
        value: Some(value.to_vec()),
    }
}

fn delete(namespace: &str, key: &str) -> StateChange {
    StateChange {
        namespace: namespace.into(),
        key: key.into(),
        value: None,
    }
}

fn entry(namespace: &str, key: &str, value: &[u8]) -> StateEntry {
    StateEntry {
        namespace: namespace.into(),
        key: key.into(),
        value: value.to_vec(),
    }
}

fn part(partition: i32, epoch: i64, next_offset: i64, state: Vec<StateChange>) -> PartitionCommit {
    PartitionCommit {
        partition,
        epoch,
        next_offset,
        watermark: 100 * next_offset,
        state,
        source: SourceIdentity::default(),
        offset_base: 0,
    }
}

/// Deterministic incompressible-looking bytes.
fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn state_rows(store: &Store) -> u64 {
    keyed_state::Entity::find()
        .count(store.connection())
        .await
        .unwrap()
}

#[tokio::test]
async fn store_migrations_are_idempotent() {
    on_both("migr", |url| async move {
        let store = Store::connect(&url).await.unwrap();
        let expected = if url.starts_with("mysql:") {
            "mysql"
        } else {
            "sqlite"
        };
        assert_eq!(store.backend_name(), expected);
        let tenant = store.create_tenant("acme").await.unwrap();
        store
            .insert_api_key(tenant, &"ab".repeat(32), "ci")
            .await
            .unwrap();
        store.close().await.unwrap();

        // Connecting again re-runs the migrator: nothing to do, nothing lost.
        let store = Store::connect(&url).await.unwrap();
        let again = Store::connect(&url).await.unwrap();
        assert_eq!(
            again.tenant_for_key_hash(&"ab".repeat(32)).await.unwrap(),
            Some(tenant)
        );
        assert_eq!(store.tenant_for_key_hash("nope").await.unwrap(), None);
        let db = store.connection();
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM seaql_migrations",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            row.try_get::<i64>("", "n").unwrap(),
            weir_store::migration::MIGRATIONS as i64
        );
        assert!(matches!(
            store.create_tenant("acme").await,
            Err(StoreError::Db(_))
        ));
        again.close().await.unwrap();
        store.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn store_claim_commit_round_trip_and_replay() {
    on_both("trip", |url| async move {
        let store = Store::connect(&url).await.unwrap();
        let p = "trip";
        let c0 = store.claim(p, 0).await.unwrap();
        assert_eq!((c0.epoch, c0.next_offset, c0.watermark), (1, 0, i64::MIN));
        assert!(c0.state.is_empty());
        let c1 = store.claim(p, 1).await.unwrap();
        assert_eq!(c1.epoch, 1);

        let predictions = vec![
            prediction(0, 0, Some(0.25)),
            prediction(0, 1, None),
            prediction(0, 2, Some(0.75)),
            prediction(1, 0, Some(0.5)),
            prediction(1, 1, Some(1.0)),
        ];
        let windows = vec![
            window("user-0", 0, r#"{"n":2}"#, "stats@1"),
            window("user-1", 0, r#"{"n":1}"#, "stats@1"),
            window("user-0", 60_000, r#"{"n":1}"#, "stats@1"),
        ];
        let batch = CommitBatch {
            pipeline: p.into(),
            partitions: vec![
                part(
                    0,
                    c0.epoch,
                    3,
                    vec![
                        set("a", "k1", b"1"),
                        set("a", "k2", b"2"),
                        set("b", "k3", &[0, 255]),
                    ],
                ),
                part(1, c1.epoch, 2, vec![set("a", "k1", b"p1")]),
            ],
            predictions: predictions.clone(),
            window_results: windows.clone(),
            snapshot: None,
            gaps: vec![],
        };
        let stats = store.commit(batch.clone()).await.unwrap();
        assert_eq!(stats.rows_written, 2 + 5 + 3 + 4);
        assert_eq!(stats.snapshot_id, None);

        let mut sorted_windows = windows.clone();
        sorted_windows.sort_by(|a, b| (&a.key, a.window_start).cmp(&(&b.key, b.window_start)));
        assert_eq!(store.predictions(p).await.unwrap(), predictions);
        assert_eq!(store.window_results(p).await.unwrap(), sorted_windows);
        let cp = store.checkpoint(p, 0).await.unwrap().unwrap();
        assert_eq!(
            (cp.next_offset, cp.watermark, cp.owner_epoch, cp.commits),
            (3, 300, 1, 1)
        );

        // Replay: the same batch again leaves one copy of every row, with equal values.
        store.commit(batch).await.unwrap();
        assert_eq!(store.predictions(p).await.unwrap(), predictions);
        assert_eq!(store.window_results(p).await.unwrap(), sorted_windows);
        assert_eq!(state_rows(&store).await, 4);
        let cp = store.checkpoint(p, 0).await.unwrap().unwrap();
        assert_eq!((cp.next_offset, cp.watermark, cp.commits), (3, 300, 2));

        // Updates: upserts overwrite, `None` deletes, the last change of a key wins.
        let mut changed = prediction(0, 1, Some(0.9));
        changed.model_version = "logistic@2".into();
        let mut refired = window("user-0", 0, r#"{"n":3}"#, "stats@2");
        refired.window_end = 90_000;
        store
            .commit(CommitBatch {
                pipeline: p.into(),
                partitions: vec![part(
                    0,
                    c0.epoch,
                    5,
                    vec![
                        set("a", "k1", b"11"),
                        delete("a", "k2"),
                        set("c", "k4", b"gone"),
                        delete("c", "k4"),
                        delete("a", "never-there"),
                    ],
                )],
                predictions: vec![changed.clone()],
                window_results: vec![refired.clone()],
                snapshot: None,
                gaps: vec![],
            })
            .await
            .unwrap();
        let mut expected = predictions.clone();
        expected[1] = changed;
        assert_eq!(store.predictions(p).await.unwrap(), expected);
        let mut expected_windows = sorted_windows.clone();
        expected_windows[0] = refired;
        assert_eq!(store.window_results(p).await.unwrap(), expected_windows);

        // A new owner gets the committed position and exactly the live state.
        let c0 = store.claim(p, 0).await.unwrap();
        assert_eq!((c0.epoch, c0.next_offset, c0.watermark), (2, 5, 500));
        assert_eq!(
            c0.state,
            vec![entry("a", "k1", b"11"), entry("b", "k3", &[0, 255])]
        );
        let c1 = store.claim(p, 1).await.unwrap();
        assert_eq!((c1.epoch, c1.next_offset), (2, 2));
        assert_eq!(c1.state, vec![entry("a", "k1", b"p1")]);

        // Deployments, then a reset that removes every row of this pipeline only.
        let d = NewDeployment {
            pipeline: p.into(),
            stage: "model".into(),
            plugin_sha256: "cd".repeat(32),
            version_label: "logistic@2".into(),
            actor: "ci".into(),
            at_ms: 42,
            partition: Some(0),
            offset: Some(1),
        };
        let id1 = store.record_deployment(d.clone()).await.unwrap();
        let id2 = store
            .record_deployment(NewDeployment {
                partition: None,
                offset: None,
                ..d.clone()
            })
            .await
            .unwrap();
        assert!(id2 > id1);
        let history = store.deployments(p).await.unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!((history[0].id, history[0].offset), (id1, Some(1)));
        assert_eq!((history[1].id, history[1].partition), (id2, None));
        let other = store.claim("other", 0).await.unwrap();
        assert_eq!(other.epoch, 1);

        store.reset_pipeline(p).await.unwrap();
        assert!(store.predictions(p).await.unwrap().is_empty());
        assert!(store.window_results(p).await.unwrap().is_empty());
        assert!(store.deployments(p).await.unwrap().is_empty());
        assert_eq!(store.checkpoint(p, 0).await.unwrap(), None);
        assert_eq!(state_rows(&store).await, 0);
        assert!(store.checkpoint("other", 0).await.unwrap().is_some());
        store.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn store_fences_zombie_owners() {
    on_both("fence", |url| async move {
        let host_a = Store::connect(&url).await.unwrap();
        let host_b = Store::connect(&url).await.unwrap();
        let p = "fence";
        let a0 = host_a.claim(p, 0).await.unwrap();
        let a1 = host_a.claim(p, 1).await.unwrap();
        assert_eq!((a0.epoch, a1.epoch), (1, 1));
        let b0 = host_b.claim(p, 0).await.unwrap();
        assert_eq!(b0.epoch, 2);

        // A still owns partition 1, but the batch also covers partition 0, which it lost: the
        // whole batch is refused, including partition 1's checkpoint (updated first).
        let zombie = CommitBatch {
            pipeline: p.into(),
            partitions: vec![
                part(1, a1.epoch, 7, vec![set("a", "k", b"zombie1")]),
                part(0, a0.epoch, 9, vec![set("a", "k", b"zombie0")]),
            ],
            predictions: vec![prediction(0, 0, Some(0.1)), prediction(1, 0, None)],
            window_results: vec![window("user-0", 0, "{}", "v1")],
            snapshot: Some(NewSnapshot {
                stage: "model".into(),
                plugin_sha256: "ef".repeat(32),
                parent_id: None,
                bytes: vec![1, 2, 3],
                from_offset: None,
                to_offset: None,
                metrics: "{}".into(),
            }),
            gaps: vec![],
        };
        match host_a.commit(zombie).await {
            Err(StoreError::Fenced {
                pipeline,
                partition,
                epoch,
            }) => assert_eq!((pipeline.as_str(), partition, epoch), (p, 0, 1)),
            other => panic!("expected Fenced, got {other:?}"),
        }
        assert!(host_b.predictions(p).await.unwrap().is_empty());
        assert!(host_b.window_results(p).await.unwrap().is_empty());
        assert_eq!(state_rows(&host_b).await, 0);
        assert_eq!(host_b.latest_snapshot(p, "model").await.unwrap(), None);
        let cp0 = host_b.checkpoint(p, 0).await.unwrap().unwrap();
        assert_eq!(
            (cp0.next_offset, cp0.watermark, cp0.owner_epoch, cp0.commits),
            (0, i64::MIN, 2, 0)
        );
        let cp1 = host_b.checkpoint(p, 1).await.unwrap().unwrap();
        assert_eq!(
            (cp1.next_offset, cp1.watermark, cp1.owner_epoch, cp1.commits),
            (0, i64::MIN, 1, 0)
        );

        // The rightful owner commits.
        let stats = host_b
            .commit(CommitBatch {
                pipeline: p.into(),
                partitions: vec![part(0, b0.epoch, 4, vec![set("a", "k", b"b")])],
                predictions: vec![prediction(0, 0, Some(0.2))],
                window_results: vec![],
                snapshot: None,
                gaps: vec![],
            })
            .await
            .unwrap();
        assert_eq!(stats.rows_written, 3);
        assert_eq!(
            host_a.predictions(p).await.unwrap(),
            vec![prediction(0, 0, Some(0.2))]
        );
        let cp0 = host_a.checkpoint(p, 0).await.unwrap().unwrap();
        assert_eq!((cp0.next_offset, cp0.owner_epoch, cp0.commits), (4, 2, 1));

        // And A stays fenced on partition 0 even with an otherwise empty batch.
        let again = host_a
            .commit(CommitBatch {
                pipeline: p.into(),
                partitions: vec![part(0, a0.epoch, 10, vec![])],
                predictions: vec![],
                window_results: vec![],
                snapshot: None,
                gaps: vec![],
            })
            .await;
        assert!(matches!(again, Err(StoreError::Fenced { epoch: 1, .. })));
        host_a.close().await.unwrap();
        host_b.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn store_large_snapshots_round_trip() {
    on_both("snap", |url| async move {
        let store = Store::connect(&url).await.unwrap();
        let p = "snap";
        let claim = store.claim(p, 0).await.unwrap();
        let five_mb = 5 * 1024 * 1024;
        let first = NewSnapshot {
            stage: "model".into(),
            plugin_sha256: "01".repeat(32),
            parent_id: None,
            bytes: blob(five_mb, 1),
            from_offset: Some(0),
            to_offset: Some(999),
            metrics: r#"{"auc":0.9}"#.into(),
        };
        // State values past MySQL's 64 KiB BLOB go through too (LONGBLOB).
        let big_state = blob(200 * 1024, 3);
        let stats = store
            .commit(CommitBatch {
                pipeline: p.into(),
                partitions: vec![part(0, claim.epoch, 1000, vec![set("m", "w", &big_state)])],
                predictions: vec![],
                window_results: vec![],
                snapshot: Some(first.clone()),
                gaps: vec![],
            })
            .await
            .unwrap();
        let id1 = stats.snapshot_id.unwrap();
        let got = store.latest_snapshot(p, "model").await.unwrap().unwrap();
        assert_eq!(got.id, id1);
        assert_eq!(got.bytes.len(), five_mb);
        assert!(got.bytes == first.bytes, "5 MB snapshot bytes differ");

        let second = NewSnapshot {
            parent_id: Some(id1),
            bytes: blob(five_mb, 2),
            from_offset: Some(1000),
            to_offset: None,
            metrics: r#"{"auc":0.95}"#.into(),
            ..first.clone()
        };
        let id2 = store
            .commit(CommitBatch {
                pipeline: p.into(),
                partitions: vec![part(0, claim.epoch, 2000, vec![])],
                predictions: vec![],
                window_results: vec![],
                snapshot: Some(second.clone()),
                gaps: vec![],
            })
            .await
            .unwrap()
            .snapshot_id
            .unwrap();
        assert!(id2 > id1);
        let latest = store.latest_snapshot(p, "model").await.unwrap().unwrap();
        assert_eq!(latest.id, id2);
        assert_eq!(latest.parent_id, Some(id1));
        assert_eq!(latest.pipeline, p);
        assert_eq!(latest.stage, "model");
        assert_eq!(latest.plugin_sha256, second.plugin_sha256);
        assert_eq!((latest.from_offset, latest.to_offset), (Some(1000), None));
        assert_eq!(latest.metrics, second.metrics);
        assert!(latest.created_at > 0);
        assert!(latest.bytes == second.bytes, "5 MB snapshot bytes differ");
        assert_eq!(store.latest_snapshot(p, "other").await.unwrap(), None);

        let reclaimed = store.claim(p, 0).await.unwrap();
        assert_eq!(reclaimed.state, vec![entry("m", "w", &big_state)]);
        store.close().await.unwrap();
    })
    .await;
}

/// A gap is written with the checkpoint that moves past it, together with the log the new
/// position belongs to; a fenced checkpoint writes neither, and a reset removes the gaps.
#[tokio::test]
async fn store_gaps_and_source_identity_commit_with_the_position() {
    on_both("gaps", |url| async move {
        let store = Store::connect(&url).await.unwrap();
        let p = "gaps";
        let first = store.claim(p, 3).await.unwrap();
        assert_eq!(first.source, SourceIdentity::default());
        assert_eq!(first.offset_base, 0);
        let log = SourceIdentity {
            cluster_id: Some("cluster-a".into()),
            topic_id: Some("AAAAAAAAAAAAAAAAAAAAAQ".into()),
        };
        let gap = NewGap {
            topic: "events".into(),
            partition: 3,
            from_offset: 0,
            to_offset: 80_136,
            records: Some(80_136),
            reason: "retention".into(),
            detail: "the log starts at 80136".into(),
            at_ms: 1_700_000_000_000,
        };
        let mut moved = part(3, first.epoch, 80_200, vec![]);
        moved.source = log.clone();
        moved.offset_base = 17;
        // A newer owner fences the first: neither the position nor the gap is written.
        let second = store.claim(p, 3).await.unwrap();
        let fenced = store
            .commit(CommitBatch {
                pipeline: p.into(),
                partitions: vec![moved.clone()],
                predictions: vec![],
                window_results: vec![],
                snapshot: None,
                gaps: vec![gap.clone()],
            })
            .await;
        assert!(
            matches!(fenced, Err(StoreError::Fenced { .. })),
            "{fenced:?}"
        );
        assert!(store.gaps(p).await.unwrap().is_empty());

        moved.epoch = second.epoch;
        let stats = store
            .commit(CommitBatch {
                pipeline: p.into(),
                partitions: vec![moved],
                predictions: vec![],
                window_results: vec![],
                snapshot: None,
                gaps: vec![gap.clone()],
            })
            .await
            .unwrap();
        assert_eq!(stats.rows_written, 2);
        let gaps = store.gaps(p).await.unwrap();
        assert_eq!(gaps.len(), 1);
        assert_eq!((gaps[0].pipeline.as_str(), &gaps[0].gap), (p, &gap));
        let cp = store.checkpoint(p, 3).await.unwrap().unwrap();
        assert_eq!((cp.next_offset, cp.offset_base), (80_200, 17));
        assert_eq!(cp.source, log);
        let third = store.claim(p, 3).await.unwrap();
        assert_eq!((third.source, third.offset_base), (log, 17));
        assert!(store.gaps("other").await.unwrap().is_empty());

        store.reset_pipeline(p).await.unwrap();
        assert!(store.gaps(p).await.unwrap().is_empty());
        store.close().await.unwrap();
    })
    .await;
}
