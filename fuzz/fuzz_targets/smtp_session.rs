//! A whole SMTP server session fed arbitrary client bytes: it must never panic, and it must
//! only ever hand over messages whose recipients it accepted.
#![no_main]

use std::sync::Arc;

use async_trait::async_trait;
use libfuzzer_sys::fuzz_target;
use mailsilo_smtp::server::Server;
use mailsilo_smtp::{Accepted, Handler, Reply};
use tokio::io::AsyncWriteExt;

struct OnlyExampleCom;

#[async_trait]
impl Handler for OnlyExampleCom {
    fn check_recipient(&self, r: &mailsilo_smtp::address::Recipient) -> Result<(), Reply> {
        if r.domain == "example.com" { Ok(()) } else { Err(Reply::new(550, "5.7.1 Relay access denied")) }
    }
    async fn accept(&self, m: Accepted) -> Result<(), Reply> {
        assert!(m.envelope.recipients.iter().all(|r| r.address.ends_with("@example.com")));
        assert!(!m.body.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'), "bare LF reached the queue");
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        let mut settings = mailsilo_config::Config::demo().smtp;
        settings.max_message_size = 4096;
        let server = Server::new(settings, None, Arc::new(OnlyExampleCom));
        let (client, server_side) = tokio::io::duplex(1 << 16);
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let session = tokio::spawn(server.session(Box::new(server_side), "127.0.0.1:1".parse().unwrap(), stopped));
        let (mut rd, mut wr) = tokio::io::split(client);
        let drain = tokio::spawn(async move { tokio::io::copy(&mut rd, &mut tokio::io::sink()).await });
        let _ = wr.write_all(data).await;
        // End of input: the session sees EOF (dropping one half of a split would not).
        let _ = wr.shutdown().await;
        let _ = session.await;
        let _ = drain.await;
    });
});
