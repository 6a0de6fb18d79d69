//! Learning and following the classifier model. Each learned message becomes an example in
//! the store (its features and class, under a digest of its bytes, so learning it twice
//! counts once and learning it as the other class moves it); after a batch the model is
//! trained again from every example and stored with a new version; every node's engine
//! loads a new version within [`FOLLOW_INTERVAL`]. In a fleet on PostgreSQL the examples
//! and the model are shared, so one `mailsilo train` teaches every server.

use std::sync::Arc;
use std::time::Duration;

use store::{Example, Store};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::classifier::{self, Model};
use crate::content::Content;
use crate::engine::Engine;

/// How often a running engine asks the store for a newer model.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(10);

/// A message without the mbox `From ` line some files start with.
pub fn strip_from_line(raw: &[u8]) -> &[u8] {
    if raw.starts_with(b"From ") {
        raw.iter()
            .position(|&b| b == b'\n')
            .map_or(&raw[raw.len()..], |i| &raw[i + 1..])
    } else {
        raw
    }
}

/// The digest that tells messages apart for learning: two FNV-1a hashes of the bytes (with
/// different offsets) and the length, in hex.
pub fn digest(raw: &[u8]) -> String {
    let fnv = |seed: u64| {
        raw.iter().fold(seed, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    format!(
        "{:016x}{:016x}{:x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x8422_2325_cbf2_9ce4),
        raw.len()
    )
}

/// The example a message makes.
pub fn example(raw: &[u8], spam: bool) -> Example {
    let raw = strip_from_line(raw);
    Example {
        digest: digest(raw),
        spam,
        features: classifier::encode_features(&classifier::features(&Content::parse(raw))),
    }
}

/// Trains a model from every example in the store and stores it; returns its version and
/// the model.
pub async fn retrain(store: &dyn Store) -> Result<(i64, Model), store::Error> {
    let examples = store.examples().await?;
    let model = tokio::task::spawn_blocking(move || {
        let features: Vec<(bool, Vec<u32>)> = examples
            .iter()
            .map(|e| (e.spam, classifier::decode_features(&e.features)))
            .collect();
        let refs: Vec<(bool, &[u32])> = features.iter().map(|(s, f)| (*s, f.as_slice())).collect();
        Model::train(&refs)
    })
    .await
    .map_err(|e| store::Error::Unavailable(format!("training failed: {e}")))?;
    let version = store.set_model(model.encode()).await?;
    Ok((version, model))
}

/// Learns one message reported from the quarantine: its bytes without the scan's own
/// header fields. The model is trained again by a [`Retrainer`], not here.
pub async fn learn_reported(
    store: &dyn Store,
    raw: &[u8],
    spam: bool,
    authserv_id: Option<&str>,
) -> Result<(), store::Error> {
    let raw = crate::intake::without_scan_headers(raw, authserv_id);
    store.learn(vec![example(&raw, spam)]).await.map(drop)
}

/// Trains the model again after reports, one training at a time: requests made while one
/// runs are served by one more run after it, so a burst of reports (a bulk call) costs two
/// trainings, not one each. Every engine loads the new model within [`FOLLOW_INTERVAL`].
pub struct Retrainer {
    asks: tokio::sync::mpsc::UnboundedSender<()>,
}

impl Retrainer {
    /// Starts the trainer's task, until `shutdown`.
    pub fn spawn(store: Arc<dyn Store>, mut shutdown: watch::Receiver<bool>) -> Arc<Retrainer> {
        let (asks, mut asked) = tokio::sync::mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ask = asked.recv() => if ask.is_none() { return },
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                // Every request made so far is served by this one training.
                while asked.try_recv().is_ok() {}
                match retrain(store.as_ref()).await {
                    Ok((version, model)) => info!(
                        version,
                        spam = model.spam,
                        ham = model.ham,
                        "classifier trained again on reports from the quarantine"
                    ),
                    Err(e) => warn!(error = %e, "training again after reports failed"),
                }
            }
        });
        Arc::new(Retrainer { asks })
    }

    /// Asks for a training (served by the next one to start).
    pub fn request(&self) {
        let _ = self.asks.send(());
    }
}

/// Loads the store's model into `engine` when its version is not the one in force;
/// returns whether one was loaded.
pub async fn refresh(engine: &Engine, store: &dyn Store) -> Result<bool, store::Error> {
    let latest = store.model_version().await?;
    if latest.is_none() || latest == engine.model_version() {
        return Ok(false);
    }
    let Some((version, data)) = store.model().await? else {
        return Ok(false);
    };
    match tokio::task::spawn_blocking(move || Model::decode(&data)).await {
        Ok(Ok(model)) => {
            info!(
                version,
                spam = model.spam,
                ham = model.ham,
                "classifier model loaded"
            );
            engine.set_model(version, model);
            Ok(true)
        }
        Ok(Err(e)) => Err(store::Error::Unavailable(format!(
            "classifier model {version}: {e}"
        ))),
        Err(e) => Err(store::Error::Unavailable(format!(
            "classifier model {version}: {e}"
        ))),
    }
}

/// Keeps `engine`'s model the store's latest until shutdown.
pub async fn follow(
    engine: Arc<Engine>,
    store: Arc<dyn Store>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut warned = false;
    loop {
        match refresh(&engine, store.as_ref()).await {
            Ok(_) => warned = false,
            Err(e) if !warned => {
                warn!(error = %e, "could not load the classifier model; the one in force stays");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_tell_messages_apart_and_ignore_the_from_line() {
        let a = example(
            b"From x@y Mon Jan 1 00:00:00 2024\nSubject: a\n\nbody\n",
            true,
        );
        let b = example(b"Subject: a\n\nbody\n", false);
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.features, b.features);
        assert_ne!(example(b"Subject: b\n\nbody\n", true).digest, a.digest);
    }
}
