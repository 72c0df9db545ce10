//! Where topics live: weir's embedded broker, or an external Kafka-protocol cluster.

use anyhow::{Context, Result, anyhow};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::mocking::MockCluster;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

/// How much of each partition the embedded broker keeps (librdkafka's mock cluster,
/// hard-coded there): the last 5 MiB of record batches, compressed size.
pub const EMBEDDED_RETENTION_BYTES: u64 = 5 << 20;

/// What the embedded broker keeps, in one sentence for the command line and the logs.
pub const EMBEDDED_LIMITS: &str = "the embedded Kafka broker (librdkafka's mock cluster) keeps \
    its topics in memory only, holds the last 5 MiB of each partition, and forgets everything \
    when weir stops; use --kafka HOST:PORT for a real broker";

enum Command {
    CreateTopic {
        name: String,
        partitions: i32,
        reply: mpsc::Sender<Result<()>>,
    },
}

/// The embedded broker: librdkafka's mock cluster, a real Kafka-protocol broker on a random
/// loopback port, run by a thread of its own (the mock cluster's handle may not move between
/// threads; this one can be shared).
///
/// It has two limits to know, printed by every command that starts it
/// ([`EMBEDDED_LIMITS`]): its partitions keep only their last 5 MiB of record batches
/// (compressed size; older batches are dropped as new ones arrive, and a consumer that
/// falls that far behind finds a gap, which weir reports), and everything lives in memory,
/// so a new embedded broker starts with empty topics (weir recognises the new topics by their
/// ids and records the restart as a gap).
pub struct EmbeddedBroker {
    bootstrap: String,
    commands: mpsc::Sender<Command>,
}

impl EmbeddedBroker {
    /// Starts a mock cluster with one broker on a random loopback port.
    pub fn start() -> Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String>>();
        let (commands, rx) = mpsc::channel::<Command>();
        std::thread::Builder::new()
            .name("weir-embedded-broker".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("starting the embedded broker: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Runs until every handle is dropped; the cluster goes with the thread.
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Command::CreateTopic {
                            name,
                            partitions,
                            reply,
                        } => {
                            let result = match cluster.create_topic(&name, partitions, 1) {
                                Ok(()) => Ok(()),
                                Err(e)
                                    if e.rdkafka_error_code()
                                        == Some(RDKafkaErrorCode::TopicAlreadyExists) =>
                                {
                                    Ok(())
                                }
                                Err(e) => Err(anyhow!("creating topic `{name}`: {e}")),
                            };
                            let _ = reply.send(result);
                        }
                    }
                }
            })
            .context("starting the embedded broker's thread")?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| anyhow!("the embedded broker's thread ended while starting"))??;
        Ok(EmbeddedBroker {
            bootstrap,
            commands,
        })
    }

    /// Its `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// Creates a topic unless it exists (a topic that exists keeps its partitions). The
    /// mock broker has no CreateTopics admin API; this goes to it directly.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        let (reply, rx) = mpsc::channel();
        self.commands
            .send(Command::CreateTopic {
                name: topic.to_owned(),
                partitions,
                reply,
            })
            .map_err(|_| anyhow!("the embedded broker has stopped"))?;
        rx.recv()
            .map_err(|_| anyhow!("the embedded broker has stopped"))?
    }
}

/// The broker a worker reads from and writes to.
#[derive(Clone)]
pub enum Broker {
    /// weir's embedded broker, in this process (in memory: see [`EmbeddedBroker`]).
    Embedded(Arc<EmbeddedBroker>),
    /// An external Kafka-protocol cluster, by its bootstrap servers.
    External(String),
}

impl Broker {
    /// Its `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        match self {
            Broker::Embedded(b) => b.bootstrap(),
            Broker::External(s) => s.clone(),
        }
    }

    /// True for the embedded broker, whose topics die with the process.
    pub fn is_embedded(&self) -> bool {
        matches!(self, Broker::Embedded(_))
    }

    /// Creates the topics that are missing, each with its partition count; topics that
    /// exist keep theirs. On an external cluster this is the CreateTopics admin API with the
    /// broker's default replication, so the account needs the right to create topics (or the
    /// topics must exist).
    pub fn ensure_topics(&self, topics: &[(String, i32)]) -> Result<()> {
        match self {
            Broker::Embedded(b) => {
                for (t, p) in topics {
                    b.create_topic(t, *p)?;
                }
                Ok(())
            }
            Broker::External(bootstrap) => create_external(bootstrap, topics),
        }
    }
}

fn create_external(bootstrap: &str, topics: &[(String, i32)]) -> Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = super::client_config(bootstrap)
        .create()
        .context("creating a Kafka admin client")?;
    // What exists: the whole cluster's metadata (a request for named topics could create
    // them with the broker's defaults).
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .with_context(|| format!("listing the topics at {bootstrap}"))?;
    let missing: Vec<&(String, i32)> = topics
        .iter()
        .filter(|(t, _)| !metadata.topics().iter().any(|m| m.name() == t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(-1)))
        .collect();
    let names: Vec<&str> = missing.iter().map(|(t, _)| t.as_str()).collect();
    let opts = AdminOptions::new()
        .request_timeout(Some(CREATE_TIMEOUT))
        .operation_timeout(Some(CREATE_TIMEOUT));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .context("starting a runtime for the admin client")?;
    let answer = rt.block_on(async {
        tokio::time::timeout(CREATE_TIMEOUT * 2, admin.create_topics(&new, &opts)).await
    });
    let results = match answer {
        Ok(Ok(results)) => results,
        // No CreateTopics API (librdkafka's mock cluster run as `weir broker`, for one), or
        // no answer: the producer's automatic topic creation may still make them.
        Ok(Err(e)) => {
            tracing::warn!(
                "the broker at {bootstrap} did not create the missing topics {names:?} ({e}); \
                 relying on its automatic topic creation"
            );
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(
                "the broker at {bootstrap} did not answer the creation of the missing topics \
                 {names:?} within {} s; relying on its automatic topic creation",
                (CREATE_TIMEOUT * 2).as_secs()
            );
            return Ok(());
        }
    };
    for r in results {
        match r {
            Ok(t) => tracing::info!("created topic `{t}` at {bootstrap}"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(anyhow!("creating topic `{t}` at {bootstrap}: {e}")),
        }
    }
    Ok(())
}

/// How long creating topics on an external cluster may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(5);
