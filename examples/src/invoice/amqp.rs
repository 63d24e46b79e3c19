//! RabbitMQ through `lapin`: the event queue and its dead-letter queue, publishing, and a consumer
//! with manual acknowledgements.
//!
//! The consumer acks a delivery once its invoice is paid (or was already), nacks it with
//! `requeue` when it must run again (order busy, step dropped at its deadline, refused stale
//! write, database error), and dead-letters a bad message by publishing it to the dead-letter
//! queue with an `x-reject-reason` header (confirmed by the broker) before acking it: a bad
//! message never blocks the queue, and a good one is never acked unfinished. A consumer that dies
//! leaves its unacked deliveries to the broker, which delivers them again to the others.

use std::sync::Arc;

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Semaphore;

use super::{Disposition, InvoiceService};
use crate::setup::BoxError;

/// The header naming why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-reject-reason";

/// `url` with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    crate::setup::redact(url)
}

/// A channel (with publisher confirms) to the event queue and its dead-letter queue.
pub struct AmqpQueues {
    connection: Connection,
    channel: Channel,
    queue: String,
    dlq: String,
}

impl std::fmt::Debug for AmqpQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpQueues")
            .field("queue", &self.queue)
            .field("dlq", &self.dlq)
            .finish_non_exhaustive()
    }
}

async fn channel(url: &str) -> Result<(Connection, Channel), BoxError> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("RabbitMQ at {}: {e}", redact(url)))?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}

impl AmqpQueues {
    /// Connects to `url` and declares (if missing) the queue `queue` and the dead-letter queue
    /// `dlq`, both durable; a run's queues are deleted at its end, and expire after 10 minutes
    /// unused if the run was killed.
    pub async fn declare(url: &str, queue: &str, dlq: &str) -> Result<AmqpQueues, BoxError> {
        let (connection, channel) = channel(url).await?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongUInt(600_000));
        for name in [queue, dlq] {
            channel
                .queue_declare(
                    name.into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    arguments.clone(),
                )
                .await?;
        }
        Ok(AmqpQueues {
            connection,
            channel,
            queue: queue.to_owned(),
            dlq: dlq.to_owned(),
        })
    }

    /// Publishes `payload` to the event queue (persistent) and waits for the broker's confirm.
    pub async fn publish(&self, payload: &[u8]) -> Result<(), BoxError> {
        publish(&self.channel, &self.queue, payload, FieldTable::default()).await
    }

    /// Messages ready in the event queue (not counting those delivered and not yet acked).
    pub async fn ready(&self) -> Result<u32, BoxError> {
        let queue = self
            .channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(queue.message_count())
    }

    /// Takes every message from the dead-letter queue: `(payload, reason)`.
    pub async fn take_dead_letters(&self) -> Result<Vec<(Vec<u8>, String)>, BoxError> {
        let mut out = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await?
        {
            let delivery = &message.delivery;
            let reason = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| {
                    h.inner()
                        .iter()
                        .find(|(k, _)| k.as_str() == REASON_HEADER)
                        .map(|(_, v)| v.clone())
                })
                .and_then(|v| match v {
                    AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into()),
                    _ => None,
                })
                .unwrap_or_default();
            out.push((delivery.data.clone(), reason));
        }
        Ok(out)
    }

    /// Deletes both queues and closes the connection.
    pub async fn delete(self) -> Result<(), BoxError> {
        for name in [&self.queue, &self.dlq] {
            self.channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        let _ = self.connection.close(200, "bye".into()).await;
        Ok(())
    }
}

async fn publish(
    channel: &Channel,
    queue: &str,
    payload: &[u8],
    headers: FieldTable,
) -> Result<(), BoxError> {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await?
        .await?;
    if confirm.is_nack() {
        return Err(format!("RabbitMQ refused a message for {queue}").into());
    }
    Ok(())
}

/// Consumes `queue` with `service` until the connection fails: up to `prefetch` deliveries
/// handled at once, each acked, requeued or dead-lettered to `dlq` as the module docs say. Calls
/// `ready` once the consumer is registered.
pub async fn consume(
    url: &str,
    queue: &str,
    dlq: &str,
    service: InvoiceService,
    prefetch: u16,
    ready: impl FnOnce(),
) -> Result<(), BoxError> {
    let (_connection, channel) = channel(url).await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            format!("invoice-{}", std::process::id()).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    ready();
    let slots = Arc::new(Semaphore::new(usize::from(prefetch.max(1))));
    let dlq: Arc<str> = dlq.into();
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (service, channel, dlq) = (service.clone(), channel.clone(), dlq.clone());
        tokio::spawn(async move {
            let disposition = service.handle(&delivery.data, delivery.redelivered).await;
            let settled = match disposition {
                Disposition::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
                Disposition::Requeue => {
                    delivery
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        })
                        .await
                }
                Disposition::DeadLetter(reason) => {
                    let mut headers = FieldTable::default();
                    headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
                    match publish(&channel, &dlq, &delivery.data, headers).await {
                        Ok(()) => delivery.acker.ack(BasicAckOptions::default()).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "dead-lettering failed; requeued");
                            delivery
                                .acker
                                .nack(BasicNackOptions {
                                    requeue: true,
                                    ..BasicNackOptions::default()
                                })
                                .await
                        }
                    }
                }
            };
            if let Err(e) = settled {
                tracing::warn!(error = %e, "could not settle a delivery");
            }
            drop(slot);
        });
    }
    Err("the RabbitMQ consumer was cancelled or its connection closed".into())
}
