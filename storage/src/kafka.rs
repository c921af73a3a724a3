//! The durable message log on Kafka (rdkafka, bundled librdkafka): every
//! accepted message goes to `im_message_raw` keyed by conversation, so one
//! conversation's messages keep their order in one partition; group
//! changes also go to `im_group_events`, presence changes to
//! `im_presence`. The producer is idempotent with `acks=all`: when
//! [`MessageLog::append`] returns, Kafka has the messages, and that is
//! what a sender's ack means in cluster mode. A broker that does not
//! answer within the send timeout fails the call (the sends are not
//! acked); the producer reconnects by itself when the broker is back.
//!
//! A record's payload is the protobuf `ChatMessage`; its `origin` header
//! names the node that accepted it (that node pushed it to its own devices
//! already).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::{ChatMessage, StoreError, WriteOp, WriteOutcome, WriteStore};

/// Every accepted message, keyed by conversation.
pub const MESSAGES_TOPIC: &str = "im_message_raw";
/// Presence changes, keyed by user.
pub const PRESENCE_TOPIC: &str = "im_presence";
/// Group changes (their event messages) and other changes to what nodes
/// keep of a conversation (a block between its users), keyed by
/// conversation.
pub const GROUP_EVENTS_TOPIC: &str = "im_group_events";

const ORIGIN_HEADER: &str = "origin";
/// The header that marks a presence-topic record as a sign-out.
const KIND_HEADER: &str = "kind";
const SIGN_OUT: &[u8] = b"sign-out";

/// One deployment's topic names: the standard ones behind an optional
/// prefix (several deployments, or test runs, can share one Kafka).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Every accepted message.
    pub messages: String,
    /// Presence changes.
    pub presence: String,
    /// Group changes.
    pub group_events: String,
}

impl Topics {
    /// The standard names behind `prefix` ("" for exactly the standard ones).
    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            messages: format!("{prefix}{MESSAGES_TOPIC}"),
            presence: format!("{prefix}{PRESENCE_TOPIC}"),
            group_events: format!("{prefix}{GROUP_EVENTS_TOPIC}"),
        }
    }
}

impl From<rdkafka::error::KafkaError> for StoreError {
    fn from(err: rdkafka::error::KafkaError) -> Self {
        StoreError::Unavailable {
            message: format!("kafka: {err}"),
            retryable: true,
        }
    }
}

/// Creates the topics when missing (`partitions` each).
pub fn ensure_topics(brokers: &str, topics: &Topics, partitions: i32) -> Result<(), StoreError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let topics: Vec<NewTopic<'_>> = [&topics.messages, &topics.presence, &topics.group_events]
        .into_iter()
        .map(|name| NewTopic::new(name, partitions.max(1), TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deadline = Instant::now() + Duration::from_secs(30);
    let results = block_until(admin.create_topics(&topics, &options), Some(deadline)).ok_or_else(
        || StoreError::Unavailable {
            message: "kafka: no answer to CreateTopics within 30 s".into(),
            retryable: true,
        },
    )??;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(StoreError::Unavailable {
                    message: format!("kafka: cannot create topic {topic}: {code}"),
                    retryable: true,
                })
            }
        }
    }
    Ok(())
}

/// Runs a future on this thread until it ends or `deadline` passes
/// (`None`: never). rdkafka's futures are runtime-free: librdkafka's own
/// threads complete them.
fn block_until<F: std::future::Future>(future: F, deadline: Option<Instant>) -> Option<F::Output> {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return Some(output);
        }
        match deadline {
            None => std::thread::park(),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                std::thread::park_timeout(left);
            }
        }
    }
}

/// The producer side of the log, shared by a node's writer threads.
pub struct MessageLog {
    /// Replaced when librdkafka declares it dead (a fatal error, such as
    /// being fenced after an outage): a dead idempotent producer refuses
    /// every later send, so without a new one the node could never log
    /// again.
    producer: std::sync::RwLock<FutureProducer>,
    config: ClientConfig,
    origin: String,
    topics: Topics,
    send_timeout: Duration,
}

impl MessageLog {
    /// An idempotent `acks=all` producer to `brokers`, failing a send the
    /// broker has not acknowledged within `send_timeout`.
    pub fn connect(
        brokers: &str,
        topics: Topics,
        node_id: u16,
        send_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let timeout_ms = send_timeout.as_millis().max(100).to_string();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            // Names this node in the broker's logs and metrics.
            .set("client.id", format!("ourchat-node-{node_id}"))
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .set("socket.nagle.disable", "true")
            .set("message.timeout.ms", &timeout_ms)
            .set("request.timeout.ms", &timeout_ms)
            .set("socket.timeout.ms", &timeout_ms)
            .set("reconnect.backoff.max.ms", "1000");
        let producer: FutureProducer = config.create()?;
        Ok(MessageLog {
            producer: std::sync::RwLock::new(producer),
            config,
            origin: node_id.to_string(),
            topics,
            send_timeout,
        })
    }

    /// Appends `messages` to the message log and waits until Kafka has
    /// every one; the group events among them also go to the group topic.
    pub fn append<'m>(
        &self,
        messages: impl IntoIterator<Item = &'m ChatMessage>,
    ) -> Result<(), StoreError> {
        let mut pending = Vec::new();
        for message in messages {
            let payload = message.encode_to_vec();
            pending.push(self.produce(
                &self.topics.messages,
                &message.conversation_id,
                &payload,
            )?);
            if message.group_event.is_some() {
                pending.push(self.produce(
                    &self.topics.group_events,
                    &message.conversation_id,
                    &payload,
                )?);
            }
        }
        self.wait(pending)
    }

    /// Tells the other nodes that what they keep of a conversation (who
    /// may send in it) changed outside its message stream, and waits for
    /// Kafka's ack.
    pub fn publish_changed(&self, conversation_id: &str) -> Result<(), StoreError> {
        let notice = ChatMessage {
            conversation_id: conversation_id.to_string(),
            ..Default::default()
        };
        let delivery = self.produce(
            &self.topics.group_events,
            conversation_id,
            &notice.encode_to_vec(),
        )?;
        self.wait(vec![delivery])
    }

    /// Publishes a user's presence change (`payload`: a `PresenceInfo`) and
    /// waits for Kafka's ack.
    pub fn publish_presence(&self, user_id: i64, payload: &[u8]) -> Result<(), StoreError> {
        let delivery = self.produce(&self.topics.presence, &user_id.to_string(), payload)?;
        self.wait(vec![delivery])
    }

    /// Publishes a device's sign-out for the node holding its connection
    /// (`payload`: a `DeviceSignOut`), on the user's presence partition,
    /// and waits for Kafka's ack.
    pub fn publish_sign_out(&self, user_id: i64, payload: &[u8]) -> Result<(), StoreError> {
        let delivery = self.produce_marked(
            &self.topics.presence,
            &user_id.to_string(),
            payload,
            Some(SIGN_OUT),
        )?;
        self.wait(vec![delivery])
    }

    fn produce(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
    ) -> Result<rdkafka::producer::DeliveryFuture, StoreError> {
        self.produce_marked(topic, key, payload, None)
    }

    fn produce_marked(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        kind: Option<&[u8]>,
    ) -> Result<rdkafka::producer::DeliveryFuture, StoreError> {
        let mut headers = OwnedHeaders::new().insert(Header {
            key: ORIGIN_HEADER,
            value: Some(self.origin.as_bytes()),
        });
        if let Some(kind) = kind {
            headers = headers.insert(Header {
                key: KIND_HEADER,
                value: Some(kind),
            });
        }
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        let sent = {
            let producer = self.producer.read().unwrap_or_else(|e| e.into_inner());
            producer.send_result(record)
        };
        sent.map_err(|(error, _)| {
            self.revive_if_dead(
                error.rdkafka_error_code() == Some(RDKafkaErrorCode::ProducerFenced),
            );
            error.into()
        })
    }

    /// Replaces a dead producer — one librdkafka declared fatally failed,
    /// or one the broker fenced (after an outage the broker may bump its
    /// epoch, and every later send is refused) — with a new one: a new
    /// producer id; records the dead one had in flight may be in the log
    /// once more, which readers already tolerate.
    fn revive_if_dead(&self, fenced: bool) {
        let mut producer = self.producer.write().unwrap_or_else(|e| e.into_inner());
        let fatal = rdkafka::producer::Producer::client(&*producer).fatal_error();
        let (code, reason) = match fatal {
            Some(fatal) => fatal,
            None if fenced => (
                RDKafkaErrorCode::ProducerFenced,
                "fenced by the broker".into(),
            ),
            None => return,
        };
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(?code, %reason, "Kafka producer died; replaced by a new one");
                *producer = fresh;
            }
            Err(error) => tracing::error!(%error, "Kafka producer died and cannot be replaced"),
        }
    }

    /// Waits for every delivery, at most the send timeout in all: an
    /// idempotent producer facing a hung broker may hold a record well past
    /// `message.timeout.ms` while it re-establishes its producer id. A
    /// record given up on here may still land later; its sender was told
    /// "not accepted" and retries with the same client id, which gets the
    /// same seq, so the log may hold it twice and MySQL keeps one.
    fn wait(&self, pending: Vec<rdkafka::producer::DeliveryFuture>) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.send_timeout;
        let mut first_error = None;
        let mut fenced = false;
        // Not retryable by the writer: librdkafka has retried within the
        // timeout already, and the sender should hear "not accepted" now.
        let refused = |message: String| StoreError::Unavailable {
            message,
            retryable: false,
        };
        for delivery in pending {
            let error = match block_until(delivery, Some(deadline)) {
                Some(Ok(Ok(_))) => continue,
                Some(Ok(Err((error, _)))) => {
                    fenced |= error.rdkafka_error_code() == Some(RDKafkaErrorCode::ProducerFenced);
                    refused(format!("kafka: {error}"))
                }
                Some(Err(_)) => refused("kafka: producer closed".into()),
                None => refused(format!(
                    "kafka: no acknowledgement within {:?}",
                    self.send_timeout
                )),
            };
            first_error.get_or_insert(error);
        }
        match first_error {
            None => Ok(()),
            Some(error) => {
                self.revive_if_dead(fenced);
                Err(error)
            }
        }
    }
}

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// The node that accepted it (`None`: not written by OurChat).
    pub origin: Option<u16>,
    /// The message.
    pub message: ChatMessage,
}

/// Decodes a log record; `None` for a payload that is not a message.
pub fn decode_record(record: &BorrowedMessage<'_>) -> Option<LogRecord> {
    use rdkafka::Message as _;
    let message = ChatMessage::decode(record.payload()?).ok()?;
    Some(LogRecord {
        origin: origin_of(record),
        message,
    })
}

/// The node that published a record (its `origin` header).
pub fn origin_of(record: &BorrowedMessage<'_>) -> Option<u16> {
    use rdkafka::Message as _;
    record.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == ORIGIN_HEADER)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
    })
}

/// Whether a presence-topic record is a device's sign-out (else it is a
/// presence change).
pub fn is_sign_out(record: &BorrowedMessage<'_>) -> bool {
    use rdkafka::Message as _;
    record.headers().is_some_and(|headers| {
        headers
            .iter()
            .any(|h| h.key == KIND_HEADER && h.value == Some(SIGN_OUT))
    })
}

/// A consumer in group `group_id` on `topics` (offsets committed by the
/// caller after its work is durable).
pub fn group_consumer(
    brokers: &str,
    group_id: &str,
    topics: &[&str],
) -> Result<BaseConsumer, StoreError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        // Low latency over batching: a fetch returns as soon as a record is
        // there (librdkafka's default waits up to 500 ms for more).
        .set("fetch.wait.max.ms", "10")
        .set("socket.nagle.disable", "true")
        .set("heartbeat.interval.ms", "1000")
        .create()?;
    consumer.subscribe(topics)?;
    Ok(consumer)
}

/// A consumer of every partition of `topics` from their current ends, in
/// no group: each node sees every record published from now on.
pub fn tail_consumer(brokers: &str, topics: &[&str]) -> Result<BaseConsumer, StoreError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "ourchat-tail-unused")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("socket.nagle.disable", "true")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for topic_metadata in metadata.topics() {
            for partition in topic_metadata.partitions() {
                assignment.add_partition_offset(topic, partition.id(), Offset::End)?;
            }
        }
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// The cluster's message writer: messages go to the log (their ack is
/// Kafka's), group changes to the store and then, with their event
/// message, to the log. A store failure refuses only the group changes of
/// the batch (`Refused`, which their senders see as "retry"): messages
/// keep flowing while MySQL is away, since the log feeds MySQL later.
pub struct LoggedWriter {
    log: Arc<MessageLog>,
    store: Box<dyn WriteStore>,
}

impl LoggedWriter {
    /// Messages to `log`, group changes to `store` first.
    pub fn new(log: Arc<MessageLog>, store: Box<dyn WriteStore>) -> Self {
        LoggedWriter { log, store }
    }
}

impl WriteStore for LoggedWriter {
    fn apply_batch(&mut self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        let changes: Vec<WriteOp> = ops
            .iter()
            .filter(|op| !matches!(op, WriteOp::AppendMessage(_)))
            .cloned()
            .collect();
        let mut change_outcomes = if changes.is_empty() {
            Vec::new()
        } else {
            match self.store.apply_batch(&changes) {
                Ok(outcomes) => outcomes,
                Err(error) => {
                    tracing::warn!(%error, ops = changes.len(), "store refused the batch's changes");
                    vec![WriteOutcome::Refused; changes.len()]
                }
            }
        }
        .into_iter();
        let mut outcomes = Vec::with_capacity(ops.len());
        let mut logged = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                WriteOp::AppendMessage(message) => {
                    logged.push(&**message);
                    outcomes.push(WriteOutcome::Done);
                }
                WriteOp::GroupChange { event, .. } => {
                    let outcome = change_outcomes.next().unwrap_or(WriteOutcome::Refused);
                    if outcome == WriteOutcome::Done {
                        logged.push(&**event);
                    }
                    outcomes.push(outcome);
                }
                _ => outcomes.push(change_outcomes.next().unwrap_or(WriteOutcome::Refused)),
            }
        }
        self.log.append(logged)?;
        Ok(outcomes)
    }
}
