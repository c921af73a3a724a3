//! A client that outlives its connection: when the node restarts or the
//! network drops, it reconnects by itself — exponential backoff with full
//! jitter, over a list of endpoints in turn — logs in again with its token,
//! syncs what it missed from its cursors, and hands the application each
//! message once, in order. A send is retried with the same
//! `client_message_id` until the server acks it (a resend gets the first
//! send's ack, so nothing is stored twice), so an application survives a
//! node restart without code of its own.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ourchat_protocol::pb::{ChatMessage, MessageType};
use tokio::sync::Mutex;

use crate::{
    new_client_message_id, Client, ClientError, ErrorCode, Push, SendAck, SeqTracker, TlsSettings,
};

/// How reconnecting backs off.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The first wait's bound.
    pub first: Duration,
    /// No wait is bounded by more than this.
    pub max: Duration,
    /// Give up (the call fails `Closed`) after trying this long.
    pub give_up_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
            give_up_after: Duration::from_secs(120),
        }
    }
}

impl Backoff {
    /// The wait before attempt `n` (0-based): uniformly random up to
    /// `first × 2^n`, capped at `max` ("full jitter": many clients of a
    /// restarted node do not come back in step).
    pub fn wait(&self, attempt: u32) -> Duration {
        let bound = self
            .first
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let fraction = (new_client_message_id() as u64 % 1_000_000) as f64 / 1_000_000.0;
        bound.mul_f64(fraction)
    }
}

/// A logged-in device that reconnects by itself.
pub struct Resilient {
    endpoints: Vec<String>,
    tls: Option<TlsSettings>,
    token: String,
    backoff: Backoff,
    current: Mutex<Option<Arc<Client>>>,
    tracker: Mutex<SeqTracker>,
    /// Messages a sync after reconnecting brought, not yet handed out.
    synced: Mutex<VecDeque<ChatMessage>>,
}

impl Resilient {
    /// Connects to the first endpoint that answers and logs in with
    /// `token` (from an earlier password login).
    pub async fn connect(
        endpoints: Vec<String>,
        tls: Option<TlsSettings>,
        token: String,
        backoff: Backoff,
    ) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no endpoints to connect to",
            )));
        }
        let resilient = Resilient {
            endpoints,
            tls,
            token,
            backoff,
            current: Mutex::new(None),
            tracker: Mutex::new(SeqTracker::default()),
            synced: Mutex::new(VecDeque::new()),
        };
        resilient.client().await?;
        Ok(resilient)
    }

    /// The live connection, reconnecting (and syncing) first if there is
    /// none.
    async fn client(&self) -> Result<Arc<Client>, ClientError> {
        let mut current = self.current.lock().await;
        if let Some(client) = current.as_ref() {
            return Ok(client.clone());
        }
        let started = tokio::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            // Never empty: `connect` refuses an empty list.
            let endpoint = &self.endpoints[attempt as usize % self.endpoints.len()];
            match self.dial(endpoint).await {
                Ok(client) => {
                    *current = Some(client.clone());
                    return Ok(client);
                }
                // A token the server no longer takes will not start working.
                Err(error) if !reconnect_may_help(&error) => return Err(error),
                Err(error) => {
                    if started.elapsed() >= self.backoff.give_up_after {
                        return Err(error);
                    }
                    tokio::time::sleep(self.backoff.wait(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Connects to `endpoint`, logs in, and syncs from the cursors.
    async fn dial(&self, endpoint: &str) -> Result<Arc<Client>, ClientError> {
        let client = Arc::new(Client::connect_with(endpoint, self.tls.as_ref()).await?);
        client.login_token(&self.token).await?;
        let mut tracker = self.tracker.lock().await;
        let missed = client.sync_all(&mut tracker).await?;
        self.synced.lock().await.extend(missed);
        Ok(client)
    }

    /// Forgets `client` if it is still the current one (it failed).
    async fn drop_connection(&self, client: &Arc<Client>) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
            *current = None;
        }
    }

    /// Our user id.
    pub async fn user_id(&self) -> Result<i64, ClientError> {
        Ok(self.client().await?.user_id())
    }

    /// Sends a text message to `receiver_id`, however many reconnects it
    /// takes; the ack is the server's for this message's one copy.
    pub async fn send_text(&self, receiver_id: i64, text: &str) -> Result<SendAck, ClientError> {
        let client_message_id = new_client_message_id();
        let mut attempt = 0u32;
        loop {
            let client = self.client().await?;
            let sent = client
                .send_message(receiver_id, MessageType::Text, text, client_message_id)
                .await;
            match sent {
                Ok(ack) => return Ok(ack),
                Err(error) if is_connection_error(&error) => self.drop_connection(&client).await,
                Err(ClientError::Server(refusal)) if refusal.retryable => {
                    tokio::time::sleep(self.backoff.wait(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The next message not handed out before (pushed, or synced after a
    /// reconnect), acknowledged to the server; `None` if none comes within
    /// `wait`.
    pub async fn next_message(&self, wait: Duration) -> Result<Option<ChatMessage>, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // After `client()`: a reconnect inside it syncs what was missed,
            // and that comes before anything the new connection pushes.
            let client = self.client().await?;
            if let Some(message) = self.synced.lock().await.pop_front() {
                return Ok(Some(message));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match client.next_push(left).await {
                None => return Ok(None),
                Some(Push::Message(message)) => {
                    if self.tracker.lock().await.accept(&message) {
                        // A lost ack only means a re-delivery after the
                        // next reconnect, which the tracker drops.
                        let _ = client.ack(&message.conversation_id, message.seq).await;
                        return Ok(Some(*message));
                    }
                }
                Some(Push::Closed) | Some(Push::Kicked(_)) => self.drop_connection(&client).await,
                Some(_) => {}
            }
        }
    }
}

/// The connection is gone or stuck: another one may do.
fn is_connection_error(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Io(_) | ClientError::Closed | ClientError::Timeout
    )
}

/// Whether dialling again may succeed after `error`.
fn reconnect_may_help(error: &ClientError) -> bool {
    match error {
        ClientError::Server(refusal) => !matches!(
            ErrorCode::try_from(refusal.code),
            Ok(ErrorCode::Unauthenticated | ErrorCode::TokenExpired | ErrorCode::Forbidden)
        ),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_endpoints_is_an_error_not_a_panic() {
        let refused = Resilient::connect(Vec::new(), None, "t".into(), Backoff::default()).await;
        assert!(matches!(refused, Err(ClientError::Io(_))));
    }

    #[test]
    fn waits_grow_to_their_cap_and_are_jittered() {
        let backoff = Backoff::default();
        for attempt in 0..40 {
            let bound = backoff
                .first
                .saturating_mul(1 << attempt.min(16))
                .min(backoff.max);
            assert!(backoff.wait(attempt) <= bound);
        }
        let waits: std::collections::HashSet<Duration> =
            (0..50).map(|_| backoff.wait(10)).collect();
        assert!(waits.len() > 40, "jittered: {}", waits.len());
    }
}
