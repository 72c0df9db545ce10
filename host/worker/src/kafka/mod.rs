//! Kafka I/O with rdkafka: the broker (weir's embedded one, or an external cluster), a group
//! consumer with manual offsets and no implicit offset resets, and an idempotent `acks=all`
//! producer with backpressure whose failures surface as errors.

mod broker;
mod consumer;
mod producer;
mod topic_id;

pub use broker::{Broker, EMBEDDED_LIMITS, EMBEDDED_RETENTION_BYTES, EmbeddedBroker};
pub use consumer::{
    AssignHook, Consumer, LogBounds, Membership, Owned, RebalanceLog, Rebalanced, SourceAlert,
    SourceLog,
};
pub use producer::{CountingContext, DELIVERY_TIMEOUT, Deliveries, Producer, SendError};
