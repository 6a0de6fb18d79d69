//! The filter: every message is scanned between SMTP acceptance and the queue. This crate
//! owns the checks (MIME content, rules, the classifier, phishing, attachments and the
//! antivirus, through the `malware` layer), the engine that runs
//! them into an explainable [`Report`] of named symbols, the verdict and action per client
//! domain ([`decide`]), and the intake that hands each recipient's copy to the queue, the
//! quarantine or a refusal before any 250 is sent.
//!
//! Like Rspamd, every check reports symbols with a score and a one-line reason; the
//! verdict is their sum against the domain's thresholds, so a verdict can always be
//! explained from its symbols alone. Like Postfix's `cleanup`, the intake sits where mail
//! passes from receiving to queueing, and the queue stays the only hand-off to delivery.

pub mod attachments;
pub mod classifier;
pub mod content;
pub mod engine;
pub mod intake;
pub mod limits;
pub mod metrics;
pub mod network;
pub mod rules;
pub mod training;

pub use engine::{Action, Decision, Engine, Envelope, Report, Symbol, Verdict, decide};
pub use intake::Intake;
