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

use rdkafka::ClientConfig;
use std::sync::OnceLock;

/// Client properties the operator may set for an external cluster: how to connect and
/// authenticate. Everything else weir's clients rely on (acks, idempotence, offsets) stays
/// weir's.
const OPERATOR_PROPERTIES: [&str; 6] = [
    "security.protocol",
    "sasl.",
    "ssl.",
    "client.id",
    "socket.",
    "broker.address.family",
];

static CLIENT_OPTIONS: OnceLock<Vec<(String, String)>> = OnceLock::new();

/// Why client options were refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientOptionError {
    /// Not `key=value`.
    #[error("a Kafka client option is `key=value`, such as `sasl.mechanism=PLAIN`; got `{0}`")]
    Syntax(String),
    /// A property weir sets itself.
    #[error(
        "`{0}` is not a connection setting weir lets the operator change (allowed: security.protocol, sasl.*, ssl.*, client.id, socket.*, broker.address.family)"
    )]
    NotAllowed(String),
    /// Set twice, differently, in one process.
    #[error("the Kafka client options were already set differently in this process")]
    AlreadySet,
}

/// Parses `key=value` client options (for example `security.protocol=SASL_PLAINTEXT`,
/// `sasl.mechanism=PLAIN`, `sasl.username=…`, `sasl.password=…`) and makes every Kafka
/// client of this process use them. Set once, at start, before any client connects.
pub fn set_client_options(options: &[String]) -> Result<(), ClientOptionError> {
    let parsed = parse_client_options(options)?;
    if CLIENT_OPTIONS.get_or_init(|| parsed.clone()) != &parsed {
        return Err(ClientOptionError::AlreadySet);
    }
    Ok(())
}

/// Checks and splits `key=value` client options (see [`set_client_options`]).
pub fn parse_client_options(
    options: &[String],
) -> Result<Vec<(String, String)>, ClientOptionError> {
    let mut parsed = Vec::new();
    for o in options {
        let (k, v) = o
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| ClientOptionError::Syntax(o.clone()))?;
        let k = k.trim();
        if !OPERATOR_PROPERTIES
            .iter()
            .any(|p| k == *p || (p.ends_with('.') && k.starts_with(p)))
        {
            return Err(ClientOptionError::NotAllowed(k.to_owned()));
        }
        parsed.push((k.to_owned(), v.to_owned()));
    }
    Ok(parsed)
}

/// A client configuration for `bootstrap` with the operator's options.
pub(crate) fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in CLIENT_OPTIONS.get().into_iter().flatten() {
        c.set(k, v);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_settings_pass() {
        let opts: Vec<String> = [
            "security.protocol=SASL_PLAINTEXT",
            "sasl.mechanism=PLAIN",
            "sasl.username=alpha",
            "sasl.password=s=cr=t",
        ]
        .map(String::from)
        .to_vec();
        let parsed = parse_client_options(&opts).unwrap();
        assert_eq!(parsed[3], ("sasl.password".into(), "s=cr=t".into()));
        for (bad, message) in [
            (
                "enable.idempotence=false",
                "`enable.idempotence` is not a connection setting",
            ),
            ("acks=0", "`acks` is not a connection setting"),
            ("sasl.mechanism", "a Kafka client option is `key=value`"),
            ("=x", "a Kafka client option is `key=value`"),
        ] {
            let e = parse_client_options(&[bad.to_owned()]).unwrap_err();
            assert!(e.to_string().starts_with(message), "{bad}: {e}");
        }
    }
}
