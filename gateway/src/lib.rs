//! The OurChat gateway: one glommio reactor per core, each with its own
//! listener, connections, and partitions of users and conversations, wired
//! by a channel mesh; worker pools behind them for everything that blocks.
//! The `ourchat` binary is a thin shell over [`server::serve`].

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
// Input must never reach a panic: no unwrap/expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

mod account;
pub mod acks;
pub mod admin;
pub mod admin_http;
pub mod auth;
pub mod cluster;
pub mod config;
mod conn_table;
pub mod connection;
mod conversations;
pub mod core;
pub mod data_dir;
mod directory;
mod fanout;
mod friends;
pub mod group_state;
mod groups;
pub mod grpc;
mod handlers;
pub mod limits;
/// How a thread hands its allocator cache back (the binary installs it).
pub use ourchat_workers::memory;
mod messages;
pub mod metrics;
pub mod outbox;
pub mod parking;
mod presence;
pub mod presence_queue;
mod remembered;
pub mod sequencer;
pub mod server;
mod shared_port;
#[cfg(test)]
mod simulation;
pub mod tls;
pub mod web;
pub mod websocket;

pub use config::Config;
pub use server::{serve, Listening, ServeError};
