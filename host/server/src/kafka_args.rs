//! The Kafka client settings `weir serve`, `weir run` and `weir up` share.

/// `--kafka-option`: connection settings for an external cluster.
#[derive(clap::Args)]
pub struct KafkaClientArgs {
    /// A Kafka client setting for an external cluster, `key=value`, repeatable (or
    /// comma-separated in `WEIR_KAFKA_OPTIONS`): `security.protocol=SASL_PLAINTEXT`,
    /// `sasl.mechanism=PLAIN`, `sasl.username=…`, `sasl.password=…`; also `ssl.*`,
    /// `socket.*`, `client.id`.
    #[arg(
        long = "kafka-option",
        env = "WEIR_KAFKA_OPTIONS",
        value_delimiter = ',',
        requires = "kafka"
    )]
    kafka_options: Vec<String>,
}

impl KafkaClientArgs {
    /// Makes every Kafka client of this process use the settings (before any connects).
    pub fn apply(&self) -> anyhow::Result<()> {
        weir_worker::kafka::set_client_options(&self.kafka_options)?;
        Ok(())
    }
}
