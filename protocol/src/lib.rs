//! OurChat's wire protocol without any I/O: the protobuf messages (generated
//! from `proto/`), the length-prefixed frame codec, stable error codes,
//! conversation ids and the snowflake id generator. Nothing here knows about
//! sockets or runtimes, so it is testable and fuzzable alone.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
// Input must never reach a panic: no unwrap/expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod codec;
pub mod conversation;
pub mod ids;
pub mod payload;
#[cfg(feature = "ws")]
pub mod ws;

/// Messages generated from the `.proto` files (package `ourchat`).
#[allow(missing_docs, clippy::large_enum_variant, clippy::enum_variant_names)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/ourchat.rs"));
}

/// Every `.proto` file as an encoded `FileDescriptorSet`: what gRPC
/// server reflection serves.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ourchat_descriptors.bin"));

pub use codec::{FrameDecoder, FrameError, DEFAULT_MAX_FRAME, HEADER_LEN};
pub use conversation::ConversationId;
pub use pb::envelope::Body;
pub use pb::{Envelope, ErrorCode};

impl pb::Error {
    /// An error with a code and a human-readable message; retryable is
    /// derived from the code so every producer agrees on it.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let retryable = matches!(
            code,
            ErrorCode::Busy
                | ErrorCode::Internal
                | ErrorCode::StoreUnavailable
                | ErrorCode::RateLimited
        );
        pb::Error {
            code: code as i32,
            message: message.into(),
            retryable,
        }
    }
}

impl Envelope {
    /// A request or reply with the given body.
    pub fn new(req_id: u32, body: Body) -> Self {
        Envelope {
            req_id,
            body: Some(body),
        }
    }

    /// An `Error` reply to `req_id` (0 for connection-level errors).
    pub fn error(req_id: u32, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(req_id, Body::Error(pb::Error::new(code, message)))
    }
}

#[cfg(test)]
mod layout {
    /// Frames and messages are moved by value through decode, sequencing,
    /// the store and the push; their rare parts are boxed (`build.rs`) so
    /// that a move stays small. A new large field should be boxed too.
    #[test]
    fn a_message_and_a_frame_move_cheaply() {
        use std::mem::size_of;
        assert!(size_of::<crate::pb::ChatMessage>() <= 160);
        assert!(size_of::<crate::pb::Envelope>() <= 168);
        assert!(size_of::<crate::pb::SendMessageRequest>() <= 80);
    }
}
