//! Prometheus metrics: commands by type and outcome, and command latency.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// The registry and the instruments the API updates.
pub struct Metrics {
    registry: Registry,
    commands: IntCounterVec,
    command_seconds: HistogramVec,
}

/// How a command ended, as a metric label.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Committed,
    Refused,
    Conflict,
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::Refused => "refused",
            Self::Conflict => "conflict",
            Self::Failed => "failed",
        }
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("omoi".into()), None)?;
        let commands = IntCounterVec::new(
            Opts::new(
                "commands_total",
                "Commands executed, by command and outcome",
            ),
            &["command", "outcome"],
        )?;
        let command_seconds = HistogramVec::new(
            HistogramOpts::new(
                "command_duration_seconds",
                "Command latency, load to commit",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["command"],
        )?;
        registry.register(Box::new(commands.clone()))?;
        registry.register(Box::new(command_seconds.clone()))?;
        Ok(Self {
            registry,
            commands,
            command_seconds,
        })
    }

    pub fn record_command(&self, command: &str, outcome: Outcome, elapsed: Duration) {
        self.commands
            .with_label_values(&[command, outcome.label()])
            .inc();
        self.command_seconds
            .with_label_values(&[command])
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}
