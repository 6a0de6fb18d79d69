//! The SMTP wire protocol for mailsilo, both ways: the server that receives mail (sessions,
//! limits, STARTTLS, the SMTP-smuggling defence, PROXY v2 from a balancer) and the client that relays it to a client
//! organisation's own server.
//!
//! This crate owns the protocol and nothing else. What a server accepts and where a message
//! goes are decided by a [`server::Handler`] supplied by the caller; what the client sends is
//! an envelope and canonical message bytes handed to it.

pub mod address;
pub mod client;
pub mod command;
pub mod conn;
pub mod data;
pub mod date;
pub mod metrics;
pub mod proxy;
pub mod reply;
pub mod server;
pub mod tls;

pub use reply::Reply;
pub use server::{Accepted, ClientInfo, Envelope, Handler, Rcpt};
