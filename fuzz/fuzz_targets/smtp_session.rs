//! A whole SMTP server session fed arbitrary client bytes: it must never panic, it must only
//! ever hand over messages whose recipients it accepted, and no content may escape its BDAT
//! chunk or its DATA terminator. Half the inputs start inside a transaction, so BDAT chunks
//! (sizes, LAST, what follows a chunk) and DATA are reached without the fuzzer having to
//! find EHLO, MAIL and RCPT first.
#![no_main]

use std::sync::Arc;

use async_trait::async_trait;
use libfuzzer_sys::fuzz_target;
use mailsilo_smtp::server::Server;
use mailsilo_smtp::{Accepted, Handler, Reply};
use tokio::io::AsyncWriteExt;

const TRANSACTION: &[u8] =
    b"EHLO fuzz.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@example.com>\r\n";
const MAX_SIZE: usize = 4096;

struct OnlyExampleCom;

#[async_trait]
impl Handler for OnlyExampleCom {
    fn check_recipient(&self, r: &mailsilo_smtp::address::Recipient) -> Result<(), Reply> {
        if r.domain == "example.com" {
            Ok(())
        } else {
            Err(Reply::new(550, "5.7.1 Relay access denied"))
        }
    }
    async fn accept(&self, m: Accepted) -> Result<&'static str, Reply> {
        let postmaster = mailsilo_config::Config::demo()
            .smtp
            .postmaster
            .unwrap_or_default();
        assert!(
            m.envelope.recipients.iter().all(|r| r
                .address
                .to_lowercase()
                .ends_with("@example.com")
                || r.address == postmaster)
        );
        assert!(
            !m.body.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
            "bare LF reached the queue"
        );
        assert!(!m.body.contains(&0), "NUL reached the queue");
        // The content (after the Received: header, under 1 KiB) is within the size limit.
        assert!(
            m.body.len() <= MAX_SIZE + 1024 + 2,
            "{} octets",
            m.body.len()
        );
        Ok("queued")
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let mut input = Vec::with_capacity(data.len() + TRANSACTION.len());
    if mode & 1 == 1 {
        input.extend_from_slice(TRANSACTION);
    }
    input.extend_from_slice(data);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut settings = mailsilo_config::Config::demo().smtp;
        settings.max_message_size = MAX_SIZE;
        let server = Arc::new(Server::new(settings, None, Arc::new(OnlyExampleCom)));
        let (client, server_side) = tokio::io::duplex(1 << 16);
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let session = tokio::spawn(server.session(
            Box::new(server_side),
            "127.0.0.1:1".parse().unwrap(),
            stopped,
        ));
        let (mut rd, mut wr) = tokio::io::split(client);
        let drain =
            tokio::spawn(async move { tokio::io::copy(&mut rd, &mut tokio::io::sink()).await });
        let _ = wr.write_all(&input).await;
        // End of input: the session sees EOF (dropping one half of a split would not).
        let _ = wr.shutdown().await;
        let _ = session.await;
        let _ = drain.await;
    });
});
